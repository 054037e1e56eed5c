//! The TIME_WAIT-related settings of one network namespace, with what each
//! really does.

use serde::Serialize;

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Setting {
    pub name: String,
    /// `None` where the running kernel has no such setting.
    pub value: Option<String>,
    pub meaning: &'static str,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Settings {
    pub netns: String,
    /// TCP_TIMEWAIT_LEN: fixed in the kernel, no sysctl changes it.
    pub time_wait_len_s: u64,
    pub settings: Vec<Setting>,
}
