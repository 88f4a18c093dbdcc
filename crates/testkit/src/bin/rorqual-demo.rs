//! `rorqual-demo`: the demo HTTP app (see `rorqual_testkit::demo`). Configured from the
//! environment: `PORT`, `INSTANCE_IP`, `DEMO_VERSION`, `DEMO_ERROR_RATE`, `DEMO_STARTUP_DELAY_MS`.

fn main() -> std::process::ExitCode {
    rorqual_testkit::demo::run_from_env()
}
