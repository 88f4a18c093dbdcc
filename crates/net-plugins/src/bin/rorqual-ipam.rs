//! `rorqual-ipam`: a CNI IPAM plugin (spec 1.0.0 and 1.1.0) over rorqual's IP pools.
//!
//! Reads the network configuration on stdin and `CNI_*` variables; prints the result (or the
//! error JSON) on stdout. See `rorqual_net::cni` for the configuration keys.

use std::io::{Read, Write};
use std::process::ExitCode;

use rorqual_net::cni::{self, CniError, Env, code};

fn main() -> ExitCode {
    let env = Env::from_process();
    let mut stdin = Vec::new();
    let outcome = match std::io::stdin().read_to_end(&mut stdin) {
        Err(e) => Err((
            "1.1.0".to_owned(),
            CniError::new(code::IO, format!("cannot read stdin: {e}"), ""),
        )),
        // The file store does no async I/O: poll on this thread, without starting a tokio
        // runtime (its reactor and timer cost start-up time in every ADD and DEL). Only the
        // etcd store needs one.
        Ok(_) if !cni::needs_async_runtime(&stdin) => {
            futures::executor::block_on(cni::run(&env, &stdin))
        }
        Ok(_) => match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(rt) => rt.block_on(cni::run(&env, &stdin)),
            Err(e) => Err((
                "1.1.0".to_owned(),
                CniError::new(code::IO, format!("cannot start runtime: {e}"), ""),
            )),
        },
    };
    let mut out = std::io::stdout().lock();
    match outcome {
        Ok(serde_json::Value::Null) => ExitCode::SUCCESS,
        Ok(v) => {
            let _ = writeln!(out, "{v}");
            ExitCode::SUCCESS
        }
        Err((version, e)) => {
            let _ = writeln!(out, "{}", e.to_json(&version));
            ExitCode::FAILURE
        }
    }
}
