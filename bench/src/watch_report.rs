//! watch-bench's report: rows of names and values, printed as one table at
//! the end, and the memory figures in them.

use crate::node::ProcStats;

pub(super) struct Report {
    pub(super) rows: Vec<(String, String)>,
}

impl Report {
    pub(super) fn section(&mut self, title: &str) {
        self.rows.push((String::new(), String::new()));
        self.rows.push((format!("-- {title}"), String::new()));
    }
    pub(super) fn row(&mut self, name: impl Into<String>, value: impl Into<String>) {
        self.rows.push((name.into(), value.into()));
    }
    pub(super) fn print(&self) {
        let width = self
            .rows
            .iter()
            .filter(|(_, v)| !v.is_empty())
            .map(|(n, _)| n.len())
            .max()
            .unwrap_or(0);
        for (name, value) in &self.rows {
            if value.is_empty() {
                println!("{name}");
            } else {
                println!("{name:<width$}  {value}");
            }
        }
    }
}

pub(super) fn mib(stats: Option<ProcStats>) -> String {
    match stats {
        Some(s) => format!(
            "{:.1} MiB (fds {}, threads {})",
            s.rss_mib(),
            s.fds,
            s.threads
        ),
        None => "n/a (external node)".into(),
    }
}

pub(super) fn own_rss() -> String {
    ProcStats::read(std::process::id())
        .map(|s| format!("{:.1} MiB", s.rss_mib()))
        .unwrap_or_default()
}
