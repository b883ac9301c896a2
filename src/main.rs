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
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("perflab: cannot start the runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(perflab::server::serve(
        config,
        perflab::server::shutdown_signal(),
    )) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("perflab: {err}");
            ExitCode::FAILURE
        }
    }
}
