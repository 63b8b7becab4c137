//! The log set-up of `serve` and `mock-upstream`: `RUST_LOG` filters (default `info`); text
//! lines with colours only when standard output (where the lines go) is a terminal and
//! `NO_COLOR` is unset, so a redirected log holds no escape codes; or one JSON object per line.

use std::io::IsTerminal;

use super::LogFormat;

/// Installs the tracing subscriber.
pub fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    match format {
        LogFormat::Json => builder.json().with_current_span(false).init(),
        LogFormat::Text => builder.with_ansi(colours_wanted()).init(),
    }
}

/// Colours only on a terminal, and never with `NO_COLOR` set (https://no-color.org).
fn colours_wanted() -> bool {
    let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
    std::io::stdout().is_terminal() && !no_color
}
