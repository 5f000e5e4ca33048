//! Logging of the Sluice processes (worker and operator), one setup for both.

/// Sets up logging for a Sluice process: `RUST_LOG` (else `default_filter`), JSON lines with
/// `SLUICE_LOG_FORMAT=json`, colours only on a terminal without `NO_COLOR`.
pub fn init_logging(default_filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| default_filter.into());
    if std::env::var("SLUICE_LOG_FORMAT").as_deref() == Ok("json") {
        tracing_subscriber::fmt()
            .json()
            .with_env_filter(filter)
            .init();
    } else {
        // Colours only on a terminal, so log files stay plain text.
        let ansi = std::io::IsTerminal::is_terminal(&std::io::stdout())
            && std::env::var_os("NO_COLOR").is_none();
        tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_ansi(ansi)
            .init();
    }
}
