//! The operator's `--providers` TOML file. Each table is a provider id: an existing id overrides
//! fields of that preset (and `domains` adds to its domains); a new id defines a provider and
//! must give `name`, `domains`, `imap`, `smtp`, `code_format` and `settings_path`.
//!
//! ```toml
//! [sina]
//! smtp_probe = true                  # also check SMTP AUTH on smtp.sina.com:465
//!
//! [corp]
//! name = "Corp Mail"
//! domains = ["corp.example"]
//! imap = "imap.corp.example:993"
//! smtp = "smtp.corp.example:465"
//! code_format = { kind = "alphanumeric", len = 16 }
//! settings_path = "Settings → Security → Client codes"
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::{CodeFormat, Endpoint, ImapSteps, Provider};

/// A providers file that cannot be used; displays as one line naming the file.
#[derive(Debug, thiserror::Error)]
#[error("providers file {}: {reason}", path.display())]
pub struct ProviderFileError {
    path: PathBuf,
    reason: String,
}

impl ProviderFileError {
    pub fn new(path: &Path, reason: impl Into<String>) -> Self {
        Self { path: path.to_owned(), reason: reason.into() }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Patch {
    name: Option<String>,
    domains: Option<Vec<String>>,
    imap: Option<String>,
    smtp: Option<String>,
    code_format: Option<CodeFormat>,
    settings_path: Option<String>,
    imap_steps: Option<ImapSteps>,
    smtp_probe: Option<bool>,
}

/// Longest code a format may allow: what a provider's login takes, with room to spare.
const MAX_CODE_LEN: usize = 256;
/// Longest provider name or settings path, as shown in hints.
const MAX_TEXT_CHARS: usize = 200;

fn endpoint(id: &str, field: &str, v: Option<String>) -> Result<Option<Endpoint>, String> {
    v.map(|s| s.parse::<Endpoint>().map_err(|e| format!("[{id}] {field}: {e}"))).transpose()
}

/// The table's domains, lower-cased, each once.
fn domains(id: &str, v: Vec<String>) -> Result<Vec<String>, String> {
    let mut out: Vec<String> = Vec::new();
    for d in v {
        let d = d.trim().to_ascii_lowercase();
        if !super::is_host_name(&d) {
            // Echoed escaped: a value with a line break must not break the one-line error.
            return Err(format!("[{id}] domains: '{}' is not a domain name", d.escape_debug()));
        }
        if !out.contains(&d) {
            out.push(d);
        }
    }
    Ok(out)
}

fn valid_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 32 && id.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

fn apply_patch(id: &str, patch: Patch, existing: Option<Provider>) -> Result<Provider, String> {
    let imap = endpoint(id, "imap", patch.imap)?;
    let smtp = endpoint(id, "smtp", patch.smtp)?;
    let new_domains = patch.domains.map(|d| domains(id, d)).transpose()?;
    match patch.code_format {
        Some(CodeFormat::Printable { min, max }) if min == 0 || min > max || max > MAX_CODE_LEN => {
            return Err(format!("[{id}] code_format: need 0 < min <= max <= {MAX_CODE_LEN}"));
        }
        Some(CodeFormat::Alphanumeric { len } | CodeFormat::Letters { len }) if len == 0 || len > MAX_CODE_LEN => {
            return Err(format!("[{id}] code_format: need 0 < len <= {MAX_CODE_LEN}"));
        }
        _ => {}
    }
    for (field, text) in [("name", &patch.name), ("settings_path", &patch.settings_path)] {
        if let Some(t) = text
            && (t.trim().is_empty() || t.chars().count() > MAX_TEXT_CHARS || t.chars().any(char::is_control))
        {
            return Err(format!("[{id}] {field}: need 1-{MAX_TEXT_CHARS} characters, none of them control characters"));
        }
    }
    if let Some(mut p) = existing {
        if let Some(n) = patch.name {
            p.name = n;
        }
        if let Some(d) = new_domains {
            p.domains.extend(d.into_iter().filter(|d| !p.domains.contains(d)).collect::<Vec<_>>());
        }
        p.imap = imap.unwrap_or(p.imap);
        p.smtp = smtp.unwrap_or(p.smtp);
        p.code_format = patch.code_format.unwrap_or(p.code_format);
        p.settings_path = patch.settings_path.unwrap_or(p.settings_path);
        p.imap_steps = patch.imap_steps.unwrap_or(p.imap_steps);
        p.smtp_probe = patch.smtp_probe.unwrap_or(p.smtp_probe);
        return Ok(p);
    }
    let missing = |field: &str| format!("[{id}] is a new provider and needs `{field}`");
    let domains = new_domains.filter(|d| !d.is_empty()).ok_or_else(|| missing("domains"))?;
    Ok(Provider {
        id: id.to_owned(),
        name: patch.name.ok_or_else(|| missing("name"))?,
        domains,
        imap: imap.ok_or_else(|| missing("imap"))?,
        smtp: smtp.ok_or_else(|| missing("smtp"))?,
        code_format: patch.code_format.ok_or_else(|| missing("code_format"))?,
        settings_path: patch.settings_path.ok_or_else(|| missing("settings_path"))?,
        imap_steps: patch.imap_steps.unwrap_or(ImapSteps::Login),
        smtp_probe: patch.smtp_probe.unwrap_or(false),
    })
}

/// Applies a providers file's text to `providers`; the error is one line naming the rule.
pub(super) fn parse_into(text: &str, providers: &mut Vec<Provider>) -> Result<(), String> {
    let patches: BTreeMap<String, Patch> = toml::from_str(text).map_err(|e| {
        let line = e.span().map_or(0, |span| text[..span.start.min(text.len())].matches('\n').count() + 1);
        // Escaped as every other error here: a control character in a key must not reach the
        // terminal.
        format!("invalid TOML at line {line}: {}", e.message().trim().replace(['\r', '\n'], " ").escape_debug())
    })?;
    // A domain in two tables would go to the one whose id sorts last: refused as ambiguous.
    let mut named: BTreeMap<String, &str> = BTreeMap::new();
    for (id, patch) in &patches {
        for d in patch.domains.iter().flatten() {
            let d = d.trim().to_ascii_lowercase();
            if let Some(other) = named.insert(d.clone(), id)
                && other != id.as_str()
            {
                return Err(format!(
                    "domain '{}' is named by both [{}] and [{}]; name it in one",
                    d.escape_debug(),
                    other.escape_debug(),
                    id.escape_debug()
                ));
            }
        }
    }
    for (id, patch) in patches {
        if !valid_id(&id) {
            return Err(format!("[{}]: provider ids are 1-32 of a-z, 0-9 and '-'", id.escape_debug()));
        }
        // A domain moved to this provider leaves the one that had it.
        let pos = providers.iter().position(|p| p.id == id);
        let existing = pos.map(|i| providers.remove(i));
        let updated = apply_patch(&id, patch, existing)?;
        for other in providers.iter_mut() {
            other.domains.retain(|d| !updated.domains.contains(d));
        }
        providers.push(updated);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::provider::presets;

    fn parse(text: &str) -> Result<Vec<Provider>, String> {
        let mut p = presets::builtin();
        parse_into(text, &mut p).map(|()| p)
    }

    fn find<'a>(ps: &'a [Provider], id: &str) -> &'a Provider {
        ps.iter().find(|p| p.id == id).unwrap()
    }

    #[test]
    fn overrides_and_adds() {
        let ps = parse(
            r#"
            [sina]
            smtp_probe = true
            imap = "imap2.sina.com:1993"
            domains = ["sina-alias.example"]

            [corp]
            name = "Corp Mail"
            domains = ["Corp.Example"]
            imap = "imap.corp.example:993"
            smtp = "smtp.corp.example:465"
            code_format = { kind = "letters", len = 20 }
            settings_path = "Settings"
            imap_steps = "netease"
            "#,
        )
        .unwrap();
        let sina = find(&ps, "sina");
        assert!(sina.smtp_probe);
        assert_eq!(sina.imap.to_string(), "imap2.sina.com:1993");
        assert_eq!(sina.smtp.to_string(), "smtp.sina.com:465");
        assert!(
            sina.domains.contains(&"sina.cn".to_owned()) && sina.domains.contains(&"sina-alias.example".to_owned())
        );
        let corp = find(&ps, "corp");
        assert_eq!(corp.domains, ["corp.example"]);
        assert_eq!(corp.code_format, CodeFormat::Letters { len: 20 });
        assert_eq!(corp.imap_steps, ImapSteps::NetEase);
    }

    #[test]
    fn a_domain_can_move_to_another_provider() {
        let ps = parse("[sina-vip]\ndomains = [\"sina.cn\"]\n").unwrap();
        assert!(find(&ps, "sina-vip").domains.contains(&"sina.cn".to_owned()));
        assert!(!find(&ps, "sina").domains.contains(&"sina.cn".to_owned()));
        // Named twice in one table is no ambiguity.
        let ps = parse("[sina]\ndomains = [\"a.example\", \"A.example\"]\n").unwrap();
        assert!(find(&ps, "sina").domains.contains(&"a.example".to_owned()));
    }

    #[test]
    fn bad_files_say_what_is_wrong() {
        for (text, needle) in [
            ("[corp]\nname = \"x\"\n", "needs `domains`"),
            ("[sina]\nimap = \"nohost\"\n", "[sina] imap"),
            ("[sina]\ncolour = \"red\"\n", "unknown field"),
            ("[sina]\ncode_format = { kind = \"printable\", min = 9, max = 3 }\n", "min <= max"),
            ("[Bad_Id]\nsmtp_probe = true\n", "provider ids"),
            ("[sina]\ndomains = [\"not a domain\"]\n", "not a domain name"),
            ("[sina\n", "TOML"),
            // Found by fuzzing: a domain with a line break made the error two lines.
            ("[sina-vip]\ndomains = [\"s\\na\u{feff}.cn\"]\n", "not a domain name"),
            ("[\"a\\nb\"]\nsmtp_probe = true\n", "provider ids"),
            // Found by an attack: each of these used to start.
            ("[sina]\ncode_format = { kind = \"alphanumeric\", len = 0 }\n", "code_format"),
            ("[sina]\ncode_format = { kind = \"printable\", min = 8, max = 4000000000 }\n", "code_format"),
            ("[sina]\ndomains = [\".\"]\n", "not a domain name"),
            ("[sina]\ndomains = [\"a..b\"]\n", "not a domain name"),
            ("[sina]\ndomains = [\"-a.com\"]\n", "not a domain name"),
            ("[sina]\ndomains = [\"a.com.\"]\n", "not a domain name"),
            ("[sina]\ndomains = [\"1.2.3.4\"]\n", "not a domain name"),
            (&format!("[sina]\ndomains = [\"{}.com\"]\n", "a".repeat(70)), "not a domain name"),
            ("[sina]\nimap = \".:993\"\n", "[sina] imap"),
            ("[sina]\nimap = \"a..b:993\"\n", "[sina] imap"),
            ("[sina]\nimap = \"-bad-.example:993\"\n", "[sina] imap"),
            ("[sina]\nimap = \"host.example:+993\"\n", "[sina] imap"),
            ("[sina]\nname = \"\"\n", "[sina] name"),
            ("[sina]\nsettings_path = \"a\\u001b[31mb\"\n", "[sina] settings_path"),
            ("[sina]\nname = \"nul\\u0000\"\n", "[sina] name"),
            // Found by an attack: IP addresses the resolver reads, not caught as such.
            ("[sina]\nimap = \"0x7f000001:993\"\n", "[sina] imap"),
            ("[sina]\nimap = \"127.0.0.0x1:993\"\n", "[sina] imap"),
            ("[sina]\nimap = \"localhost:993\"\n", "[sina] imap"),
            // Which would win is no order a reader sees (tables are applied by id).
            (
                "[zmail]\ndomains = [\"x.example\"]\n[sina]\ndomains = [\"X.example\"]\n",
                "'x.example' is named by both [sina] and [zmail]",
            ),
        ] {
            let e = parse(text).expect_err(text);
            assert!(e.contains(needle), "{text}: {e}");
            assert!(!e.contains('\n'), "one line: {e}");
        }
        // A control character in a key TOML names reaches no terminal.
        let e = parse("[sina]\n\"\\u001b[2J\" = 1\n").expect_err("unknown key");
        assert!(!e.chars().any(char::is_control), "{e:?}");
    }

    #[test]
    fn a_new_provider_may_name_a_domain_twice() {
        let ps = parse(
            "[corp]\nname = \"Corp\"\ndomains = [\"corp.example\", \"Corp.Example\"]\nimap = \"imap.corp.example:993\"\n\
             smtp = \"smtp.corp.example:465\"\ncode_format = { kind = \"letters\", len = 16 }\nsettings_path = \"x\"\n",
        )
        .unwrap();
        assert_eq!(find(&ps, "corp").domains, ["corp.example"]);
        assert!(crate::provider::Registry::from_providers(ps).is_ok(), "refused as claimed by [corp] and [corp]");
    }
}
