//! [`Settings`] as text or one JSON document.

use std::fmt::Write as _;

use super::Format;
use crate::model::sysctl::Settings;

pub fn render(doc: &Settings, format: Format) -> anyhow::Result<String> {
    let mut text = String::new();
    match format {
        Format::Json => text = serde_json::to_string(doc)? + "\n",
        Format::Text | Format::Csv => {
            writeln!(text, "TCP TIME_WAIT settings in {}", doc.netns)?;
            writeln!(
                text,
                "  {:<32} {:<20} fixed in the kernel (TCP_TIMEWAIT_LEN): no sysctl changes it; the timer wheel fires it up to a few seconds late",
                "TIME_WAIT length",
                format!("{} s", doc.time_wait_len_s)
            )?;
            for s in &doc.settings {
                let value = s.value.as_deref().unwrap_or("(not in this kernel)");
                let meaning = s.meaning.split_whitespace().collect::<Vec<_>>().join(" ");
                writeln!(text, "  {:<32} {value:<20} {meaning}", s.name)?;
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
                    value: Some("60".into()),
                    meaning: "how  long",
                },
                Setting { name: "net.ipv4.tcp_tw_recycle".into(), value: None, meaning: "gone" },
            ],
        };
        let text = render(&doc, Format::Text).unwrap();
        assert!(text.starts_with("TCP TIME_WAIT settings in ns1\n"), "{text}");
        assert!(text.contains("60                   how long"), "{text}");
        assert!(text.contains("(not in this kernel)"), "{text}");
        let json: serde_json::Value = serde_json::from_str(&render(&doc, Format::Json).unwrap()).unwrap();
        assert_eq!(json["settings"][1]["value"], serde_json::Value::Null);
    }
}
