//! [`Settings`] as text or one JSON document.

use std::fmt::Write as _;

use super::Format;
use crate::model::sysctl::Settings;

/// The text output's width: a meaning wraps under its setting.
const WIDTH: usize = 100;

fn meaning(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn wrapped(out: &mut String, text: &str) -> std::fmt::Result {
    let options = textwrap::Options::new(WIDTH).initial_indent("      ").subsequent_indent("      ");
    for line in textwrap::wrap(&meaning(text), options) {
        writeln!(out, "{line}")?;
    }
    Ok(())
}

pub fn render(doc: &Settings, format: Format) -> anyhow::Result<String> {
    let mut text = String::new();
    match format {
        Format::Json => {
            let settings: Vec<_> = doc
                .settings
                .iter()
                .map(|s| serde_json::json!({
                    "name": s.name, "value": s.value, "default": s.default, "differs": s.differs(), "meaning": meaning(s.meaning),
                }))
                .collect();
            let json = serde_json::json!({
                "netns": doc.netns, "time_wait_len_s": doc.time_wait_len_s, "settings": settings,
            });
            text = serde_json::to_string(&json)? + "\n";
        }
        Format::Text | Format::Csv => {
            writeln!(text, "TCP TIME_WAIT settings in {} (* not the kernel's default)", doc.netns)?;
            writeln!(text, "  {:<32} {:<22} DEFAULT", "SETTING", "VALUE")?;
            let fixed = format!("{} s", doc.time_wait_len_s);
            writeln!(text, "  {:<32} {fixed:<22} (fixed)", "TIME_WAIT length")?;
            wrapped(
                &mut text,
                "fixed in the kernel (TCP_TIMEWAIT_LEN): no sysctl changes it; the timer wheel fires it up to a \
                 few seconds late.",
            )?;
            for s in &doc.settings {
                let value = s.value.as_deref().unwrap_or("(not in this kernel)");
                let mark = if s.differs() { "* " } else { "  " };
                let default = match (&s.value, s.default) {
                    (None, _) => "-",
                    (Some(_), Some(default)) => default,
                    (Some(_), None) => "(sized at boot)",
                };
                writeln!(text, "{mark}{:<32} {value:<22} {default}", s.name)?;
                wrapped(&mut text, s.meaning)?;
            }
        }
    }
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::sysctl::Setting;

    #[test]
    fn text_and_json() {
        let doc = Settings {
            netns: "ns1".into(),
            time_wait_len_s: 60,
            settings: vec![
                Setting {
                    name: "net.ipv4.tcp_fin_timeout".into(),
                    value: Some("30".into()),
                    default: Some("60"),
                    meaning: "how  long",
                },
                Setting {
                    name: "net.ipv4.tcp_tw_recycle".into(),
                    value: None,
                    default: None,
                    meaning: "gone, and a long explanation that has to wrap because it goes on and on and on \
                              well past the hundred columns that the output keeps to",
                },
            ],
        };
        let text = render(&doc, Format::Text).unwrap();
        assert!(text.starts_with("TCP TIME_WAIT settings in ns1 (* not the kernel's default)\n"), "{text}");
        assert!(
            text.contains("* net.ipv4.tcp_fin_timeout         30                     60\n      how long\n"),
            "{text}"
        );
        assert!(text.contains("(not in this kernel)"), "{text}");
        assert!(text.lines().all(|l| l.len() <= WIDTH), "{text}");
        let json: serde_json::Value = serde_json::from_str(&render(&doc, Format::Json).unwrap()).unwrap();
        assert_eq!(json["settings"][1]["value"], serde_json::Value::Null);
        assert_eq!(json["settings"][0]["differs"], true);
        assert_eq!(json["settings"][0]["default"], "60");
    }
}
