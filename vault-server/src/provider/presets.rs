//! The built-in providers. Facts from the providers' help pages and Thunderbird's ISPDB; every
//! field can be overridden in the `--providers` file, since public sources disagree on some.

use super::{CodeFormat, Endpoint, ImapSteps, Provider};

const ALNUM16: CodeFormat = CodeFormat::Alphanumeric { len: 16 };
const LETTERS16: CodeFormat = CodeFormat::Letters { len: 16 };
const SINA_SETTINGS: &str = "Settings → Client POP/IMAP/SMTP";
const NETEASE_SETTINGS: &str = "Settings → POP3/SMTP/IMAP → client authorization code";

struct Preset {
    id: &'static str,
    name: &'static str,
    domains: &'static [&'static str],
    imap: &'static str,
    smtp: &'static str,
    code_format: CodeFormat,
    settings_path: &'static str,
    imap_steps: ImapSteps,
}

const PRESETS: &[Preset] = &[
    Preset {
        id: "sina",
        name: "Sina Mail",
        domains: &["sina.com", "sina.cn", "2008.sina.com"],
        imap: "imap.sina.com",
        smtp: "smtp.sina.com",
        code_format: ALNUM16,
        settings_path: SINA_SETTINGS,
        imap_steps: ImapSteps::Login,
    },
    Preset {
        id: "sina-vip",
        name: "Sina VIP Mail",
        domains: &["vip.sina.com"],
        imap: "imap.vip.sina.com",
        smtp: "smtp.vip.sina.com",
        code_format: ALNUM16,
        settings_path: SINA_SETTINGS,
        imap_steps: ImapSteps::Login,
    },
    Preset {
        id: "qq",
        name: "QQ Mail",
        domains: &["qq.com", "foxmail.com"],
        imap: "imap.qq.com",
        smtp: "smtp.qq.com",
        code_format: LETTERS16,
        settings_path: "Settings → Account → POP3/IMAP/SMTP service → authorization code",
        imap_steps: ImapSteps::Login,
    },
    Preset {
        id: "163",
        name: "NetEase 163 Mail",
        domains: &["163.com"],
        imap: "imap.163.com",
        smtp: "smtp.163.com",
        code_format: ALNUM16,
        settings_path: NETEASE_SETTINGS,
        imap_steps: ImapSteps::NetEase,
    },
    Preset {
        id: "126",
        name: "NetEase 126 Mail",
        domains: &["126.com"],
        imap: "imap.126.com",
        smtp: "smtp.126.com",
        code_format: ALNUM16,
        settings_path: NETEASE_SETTINGS,
        imap_steps: ImapSteps::NetEase,
    },
    Preset {
        id: "yeah",
        name: "NetEase Yeah Mail",
        domains: &["yeah.net"],
        imap: "imap.yeah.net",
        smtp: "smtp.yeah.net",
        code_format: ALNUM16,
        settings_path: NETEASE_SETTINGS,
        imap_steps: ImapSteps::NetEase,
    },
    Preset {
        id: "sohu",
        name: "Sohu Mail",
        domains: &["sohu.com"],
        imap: "imap.sohu.com",
        smtp: "smtp.sohu.com",
        code_format: CodeFormat::Printable { min: 8, max: 64 },
        settings_path: "Settings → POP3/SMTP/IMAP → independent password",
        imap_steps: ImapSteps::Login,
    },
    Preset {
        id: "gmail",
        name: "Gmail",
        domains: &["gmail.com", "googlemail.com"],
        imap: "imap.gmail.com",
        smtp: "smtp.gmail.com",
        code_format: LETTERS16,
        settings_path: "Google Account → Security → App passwords",
        imap_steps: ImapSteps::Login,
    },
];

/// The presets, IMAP on 993 and SMTP on 465 (implicit TLS), SMTP probing off.
pub fn builtin() -> Vec<Provider> {
    PRESETS
        .iter()
        .map(|p| Provider {
            id: p.id.to_owned(),
            name: p.name.to_owned(),
            domains: p.domains.iter().map(|d| (*d).to_owned()).collect(),
            imap: Endpoint::new(p.imap, 993),
            smtp: Endpoint::new(p.smtp, 465),
            code_format: p.code_format,
            settings_path: p.settings_path.to_owned(),
            imap_steps: p.imap_steps,
            smtp_probe: false,
        })
        .collect()
}
