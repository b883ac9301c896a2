//! External commands of the Kubernetes target (cargo, the image engine, kubectl). Every
//! command is echoed; with `dry_run` it is only echoed, which is how `--dry-run` prints
//! the whole run without touching a cluster.
use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};

pub struct Shell {
    pub dry_run: bool,
}

/// Quotes an argument for display the way a shell would need it.
fn quote(a: &str) -> String {
    if !a.is_empty()
        && a.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./:=,@%+".contains(c))
    {
        a.to_string()
    } else {
        format!("'{}'", a.replace('\'', r"'\''"))
    }
}

pub fn display(args: &[String]) -> String {
    args.iter().map(|a| quote(a)).collect::<Vec<_>>().join(" ")
}

impl Shell {
    pub fn run(&self, args: &[&str]) -> Result<String> {
        let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        self.run_env(&args, &[], None)
    }

    /// Runs `args` and returns its stdout; fails with its stderr.
    pub fn run_env(
        &self,
        args: &[String],
        env: &[(&str, &str)],
        dir: Option<&Path>,
    ) -> Result<String> {
        let shown = {
            let mut s = String::new();
            for (k, v) in env {
                s.push_str(&format!("{k}={} ", quote(v)));
            }
            s + &display(args)
        };
        if self.dry_run {
            println!("+ {shown}");
            return Ok(String::new());
        }
        eprintln!("+ {shown}");
        let (program, rest) = args.split_first().context("empty command")?;
        let mut cmd = Command::new(program);
        cmd.args(rest).stdin(Stdio::null());
        for (k, v) in env {
            cmd.env(k, v);
        }
        if let Some(d) = dir {
            cmd.current_dir(d);
        }
        let out = cmd
            .output()
            .with_context(|| format!("running {program} (is it installed?)"))?;
        if !out.status.success() {
            bail!(
                "{shown} failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotes_only_what_needs_it() {
        let args: Vec<String> = ["kubectl", "wait", "--for=jsonpath={.x}", "it's"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(
            display(&args),
            r"kubectl wait '--for=jsonpath={.x}' 'it'\''s'"
        );
    }

    #[test]
    fn a_dry_run_runs_nothing() {
        let sh = Shell { dry_run: true };
        assert_eq!(sh.run(&["false"]).unwrap(), "");
        let live = Shell { dry_run: false };
        assert!(live.run(&["false"]).is_err());
        assert_eq!(live.run(&["echo", "hi"]).unwrap(), "hi\n");
    }
}
