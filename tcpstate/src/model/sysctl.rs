//! The TIME_WAIT-related settings of one network namespace, with what each
//! really does.

use serde::Serialize;

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Setting {
    pub name: String,
    /// `None` where the running kernel has no such setting.
    pub value: Option<String>,
    /// The kernel's default; `None` where it is sized at boot from memory.
    pub default: Option<&'static str>,
    pub meaning: &'static str,
}

impl Setting {
    /// Whether the value is not the kernel's default (someone set it).
    pub fn differs(&self) -> bool {
        matches!((&self.value, self.default), (Some(value), Some(default)) if value != default)
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Settings {
    pub netns: String,
    /// TCP_TIMEWAIT_LEN: fixed in the kernel, no sysctl changes it.
    pub time_wait_len_s: u64,
    pub settings: Vec<Setting>,
}
