//! The perflab server binary: read the configuration, then serve until SIGTERM/SIGINT.
use std::process::ExitCode;

fn main() -> ExitCode {
    perflab::telemetry::init();
    let config = match perflab::config::Config::from_env() {
        Ok(config) => config,
        Err(err) => {
            eprintln!("perflab: configuration error: {err}");
            return ExitCode::from(2);
        }
    };
    // `--check-config`: validate the environment and stop (the lab checks a matrix
    // row's settings this way before it starts anything).
    if std::env::args().nth(1).as_deref() == Some("--check-config") {
        return ExitCode::SUCCESS;
    }
    if let Err(err) =
        perflab::process::raise_open_files(perflab::db::Db::descriptors_needed(&config))
    {
        eprintln!("perflab: {err}");
        return ExitCode::from(2);
    }
    match perflab::runtime::run(config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("perflab: {err}");
            ExitCode::FAILURE
        }
    }
}
