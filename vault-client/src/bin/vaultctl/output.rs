//! Tables of credentials, unused clients and audit events, as aligned text, JSON or CSV.

use std::fmt::Write as _;
use std::time::{SystemTime, UNIX_EPOCH};

use vault_client::{AuditEvent, Credential, ProbeOutcome, UnusedClient};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Table,
    Json,
    Csv,
}

/// Named columns and their rows, all text.
pub struct Table {
    columns: &'static [&'static str],
    rows: Vec<Vec<String>>,
}

/// RFC 3339, or the seconds since 1970 for a time outside years 1970-9999 (which the formatter
/// cannot write).
fn time(t: Option<SystemTime>) -> String {
    const YEAR_10000: u64 = 253_402_300_800;
    t.map(|t| match t.duration_since(UNIX_EPOCH) {
        Ok(d) if d.as_secs() < YEAR_10000 => humantime::format_rfc3339_seconds(t).to_string(),
        Ok(d) => format!("@{}", d.as_secs()),
        Err(e) => format!("@-{}", e.duration().as_secs()),
    })
    .unwrap_or_default()
}

fn outcome(o: Option<ProbeOutcome>) -> String {
    o.map(|o| o.as_str_name().trim_start_matches("PROBE_OUTCOME_").trim_start_matches("UNSPECIFIED").to_owned())
        .unwrap_or_default()
}

impl Table {
    pub fn credentials(items: &[Credential]) -> Self {
        let rows = items
            .iter()
            .map(|c| {
                vec![
                    c.mailbox.clone(),
                    c.client.clone(),
                    c.state.as_str_name().trim_start_matches("CREDENTIAL_STATE_").to_owned(),
                    c.version.to_string(),
                    outcome(Some(c.last_probe_outcome)),
                    time(c.last_verified_at),
                    time(c.last_used_at),
                ]
            })
            .collect();
        let columns = &["mailbox", "client", "state", "version", "last_probe", "last_verified", "last_used"];
        Self { columns, rows }
    }

    pub fn unused(items: &[UnusedClient]) -> Self {
        let rows = items
            .iter()
            .map(|c| {
                vec![
                    c.mailbox.clone(),
                    c.client.clone(),
                    time(c.last_used_at),
                    time(c.created_at),
                    outcome(Some(c.last_probe_outcome)),
                ]
            })
            .collect();
        Self { columns: &["mailbox", "client", "last_used", "bound", "last_probe"], rows }
    }

    pub fn audit(items: &[AuditEvent]) -> Self {
        let rows = items
            .iter()
            .map(|e| {
                vec![
                    e.id.to_string(),
                    time(e.at),
                    e.caller.clone(),
                    e.caller_role.clone(),
                    e.rpc.clone(),
                    e.mailbox.clone(),
                    e.client.clone(),
                    e.outcome.clone(),
                    outcome(e.probe_outcome),
                    e.count.to_string(),
                    e.reason.clone(),
                ]
            })
            .collect();
        let columns =
            &["id", "at", "caller", "role", "rpc", "mailbox", "client", "outcome", "probe", "count", "reason"];
        Self { columns, rows }
    }

    pub fn render(&self, format: Format) -> String {
        match format {
            Format::Table => self.text(),
            Format::Json => format!("{}\n", self.json()),
            Format::Csv => self.csv(),
        }
    }

    fn text(&self) -> String {
        if self.rows.is_empty() {
            return "(none)\n".to_owned();
        }
        let widths: Vec<usize> = (0..self.columns.len())
            .map(|i| self.rows.iter().map(|r| r[i].chars().count()).chain([self.columns[i].len()]).max().unwrap_or(0))
            .collect();
        let mut out = String::new();
        for row in std::iter::once(self.columns.iter().map(|c| (*c).to_owned()).collect::<Vec<_>>())
            .chain(self.rows.iter().cloned())
        {
            let cells: Vec<String> = row.iter().zip(&widths).map(|(cell, w)| format!("{cell:<w$}")).collect();
            let _ = writeln!(out, "{}", cells.join("  ").trim_end());
        }
        out
    }

    fn json(&self) -> String {
        let objects: Vec<String> = self
            .rows
            .iter()
            .map(|r| {
                let fields: Vec<String> =
                    self.columns.iter().zip(r).map(|(c, v)| format!("{}:{}", json_string(c), json_string(v))).collect();
                format!("{{{}}}", fields.join(","))
            })
            .collect();
        format!("[{}]", objects.join(","))
    }

    fn csv(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "{}", self.columns.join(","));
        for r in &self.rows {
            let _ = writeln!(out, "{}", r.iter().map(|v| csv_field(v)).collect::<Vec<_>>().join(","));
        }
        out
    }
}

/// One CSV of several tables: a `section` column, then every column any table has (in first
/// seen order), a table's row left empty in the columns it does not have.
fn csv_sections(sections: &[(String, Table)]) -> String {
    let mut columns: Vec<&str> = Vec::new();
    for (_, t) in sections {
        for c in t.columns {
            if !columns.contains(c) {
                columns.push(c);
            }
        }
    }
    let mut out = format!("section,{}\n", columns.join(","));
    for (title, t) in sections {
        for r in &t.rows {
            let mut cells = vec![csv_field(title)];
            cells.extend(
                columns
                    .iter()
                    .map(|c| t.columns.iter().position(|own| own == c).map(|i| csv_field(&r[i])).unwrap_or_default()),
            );
            let _ = writeln!(out, "{}", cells.join(","));
        }
    }
    out
}

/// Several titled tables: headed blocks of text, one JSON object, or CSV with a section column.
pub fn sections(sections: &[(String, Table)], format: Format) -> String {
    match format {
        Format::Table => {
            let mut out = String::new();
            for (title, t) in sections {
                let _ = write!(out, "== {title} ({})\n{}\n", t.rows.len(), t.text());
            }
            out
        }
        Format::Json => {
            let parts: Vec<String> =
                sections.iter().map(|(title, t)| format!("{}:{}", json_string(title), t.json())).collect();
            format!("{{{}}}\n", parts.join(","))
        }
        Format::Csv => csv_sections(sections),
    }
}

fn json_string(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => {
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn csv_field(s: &str) -> String {
    // A spreadsheet runs a cell that starts like a formula (a revoke reason is free text): a
    // leading quote keeps it text.
    let s = if s.starts_with(['=', '+', '-', '@', '\t', '\r']) { format!("'{s}") } else { s.to_owned() };
    if s.contains([',', '"', '\n', '\r']) { format!("\"{}\"", s.replace('"', "\"\"")) } else { s }
}

#[cfg(test)]
mod tests {
    use super::{Format, Table, csv_field, sections};

    #[test]
    fn every_row_of_a_sectioned_csv_has_the_header_s_columns_under_their_names() {
        let unused = Table {
            columns: &["mailbox", "client", "last_used", "bound"],
            rows: vec![vec![
                "a@sina.com".into(),
                "x".into(),
                "2026-01-01T00:00:00Z".into(),
                "2025-01-01T00:00:00Z".into(),
            ]],
        };
        let refused = Table {
            columns: &["mailbox", "client", "state", "last_used"],
            rows: vec![vec!["b@sina.com".into(), "y".into(), "ACTIVE".into(), String::new()]],
        };
        let csv = sections(&[("unused".into(), unused), ("refused".into(), refused)], Format::Csv);
        let lines: Vec<&str> = csv.lines().collect();
        assert_eq!(
            lines,
            [
                "section,mailbox,client,last_used,bound,state",
                "unused,a@sina.com,x,2026-01-01T00:00:00Z,2025-01-01T00:00:00Z,",
                "refused,b@sina.com,y,,,ACTIVE",
            ]
        );
    }

    #[test]
    fn a_cell_that_looks_like_a_formula_stays_text() {
        assert_eq!(csv_field("=HYPERLINK(\"http://x\")"), "\"'=HYPERLINK(\"\"http://x\"\")\"");
        assert_eq!(csv_field("+1"), "'+1");
        assert_eq!(csv_field("@SUM(A1)"), "'@SUM(A1)");
        assert_eq!(csv_field("alice@sina.com"), "alice@sina.com");
        assert_eq!(csv_field("a,b"), "\"a,b\"");
    }
}
