//! Container images for the Kubernetes target: one server image per row, built from a
//! static release binary into an image `FROM scratch`, and one load-generator image
//! carrying `lab` (static) and oha with the few shared libraries it links. Built with
//! `docker build` when a Docker engine answers, with daemonless `buildah` otherwise.
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::k8s::shell::Shell;
use crate::matrix::Row;

/// The numeric user both images run as (no /etc/passwd needed).
pub const UID: &str = "65532:65532";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    Docker,
    Buildah,
}

impl Engine {
    /// `auto`: docker when its daemon answers, buildah otherwise.
    pub fn choose(name: &str) -> Result<Self> {
        match name {
            "docker" => Ok(Self::Docker),
            "buildah" => Ok(Self::Buildah),
            "auto" => {
                let docker = Command::new("docker")
                    .args(["info", "--format", "{{.ServerVersion}}"])
                    .output()
                    .is_ok_and(|o| o.status.success());
                Ok(if docker { Self::Docker } else { Self::Buildah })
            }
            other => bail!("unknown image engine {other:?} (auto, docker or buildah)"),
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            Self::Docker => "docker",
            Self::Buildah => "buildah",
        }
    }
}

/// The host's target triple: the static binaries are built for it explicitly, so that
/// `RUSTFLAGS` do not reach build scripts and the normal `target/release` stays as is.
fn host_triple() -> Result<String> {
    let out = Command::new("rustc").arg("-vV").output()?;
    String::from_utf8(out.stdout)?
        .lines()
        .find_map(|l| l.strip_prefix("host: ").map(str::to_string))
        .context("rustc -vV names no host")
}

/// `cargo build --release` of one package with glibc linked in statically.
pub fn static_build(
    sh: &Shell,
    root: &Path,
    package: &str,
    features: &[String],
) -> Result<PathBuf> {
    let triple = host_triple()?;
    let mut args = vec![
        "cargo".to_string(),
        "build".into(),
        "--release".into(),
        "--locked".into(),
        "--quiet".into(),
        "-p".into(),
        package.into(),
        "--target".into(),
        triple.clone(),
    ];
    if !features.is_empty() {
        args.push("--features".into());
        args.push(features.join(","));
    }
    sh.run_env(
        &args,
        &[("RUSTFLAGS", "-C target-feature=+crt-static")],
        Some(root),
    )?;
    Ok(root
        .join("target")
        .join(triple)
        .join("release")
        .join(package))
}

fn fresh_dir(dir: &Path) -> Result<()> {
    if dir.exists() {
        std::fs::remove_dir_all(dir)?;
    }
    std::fs::create_dir_all(dir)?;
    Ok(())
}

fn copy_into(src: &Path, rootfs: &Path, dest: &str) -> Result<()> {
    let to = rootfs.join(dest.trim_start_matches('/'));
    std::fs::create_dir_all(to.parent().context("path")?)?;
    std::fs::copy(src, &to).with_context(|| format!("copying {} into the image", src.display()))?;
    Ok(())
}

/// The files every image carries besides its binaries: name resolution through
/// /etc/hosts, then DNS (the cluster's resolv.conf is mounted by the runtime).
fn base_files(rootfs: &Path) -> Result<()> {
    std::fs::create_dir_all(rootfs.join("etc"))?;
    std::fs::write(rootfs.join("etc/nsswitch.conf"), "hosts: files dns\n")?;
    std::fs::create_dir_all(rootfs.join("tmp"))?;
    Ok(())
}

/// The shared libraries a dynamic binary needs, by `ldd` (loader included).
fn shared_libraries(binary: &Path) -> Result<Vec<PathBuf>> {
    let out = Command::new("ldd")
        .arg(binary)
        .output()
        .context("running ldd")?;
    let text = String::from_utf8_lossy(&out.stdout);
    if text.contains("statically linked") || text.contains("not a dynamic") {
        return Ok(vec![]);
    }
    let mut libs = Vec::new();
    for line in text.lines() {
        let path = match line.split_once("=>") {
            Some((_, right)) => right.split_whitespace().next(),
            None => line.split_whitespace().next(),
        };
        if let Some(p) = path.filter(|p| p.starts_with('/')) {
            libs.push(PathBuf::from(p));
        }
        if line.contains("not found") {
            bail!(
                "{} needs a library that is not found: {line}",
                binary.display()
            );
        }
    }
    Ok(libs)
}

/// The host's CA bundle, lent to RUN steps of a build as /run/host-ca.crt (see
/// `build_image`).
const HOST_CA: &str = "/etc/ssl/certs/ca-certificates.crt";

/// Builds and checks one image from `k8s/images/<containerfile>` and a context folder.
fn build_image(
    sh: &Shell,
    engine: Engine,
    root: &Path,
    file: &str,
    ctx: &Path,
    tag: &str,
) -> Result<()> {
    let file = root.join("k8s/images").join(file);
    let file = file.to_string_lossy();
    let ctx = ctx.to_string_lossy();
    match engine {
        Engine::Docker => sh.run(&["docker", "build", "-q", "-f", &file, "-t", tag, &ctx])?,
        Engine::Buildah => {
            let mut args = vec!["buildah", "bud", "--quiet", "--pull=never"];
            // RUN steps (a peer's pip install) trust what this host trusts: behind a
            // proxy that re-signs TLS, as here, PyPI is reached only with its CA.
            let volume = format!("{HOST_CA}:/run/host-ca.crt:ro");
            if Path::new(HOST_CA).is_file() {
                args.extend(["--volume", volume.as_str()]);
            }
            args.extend(["-f", &file, "-t", tag, &ctx]);
            sh.run(&args)?
        }
    };
    Ok(())
}

/// The image's user, entrypoint and size, as the engine reports them.
pub struct Inspected {
    pub user: String,
    pub entrypoint: String,
    pub size: String,
}

pub fn inspect(sh: &Shell, engine: Engine, tag: &str) -> Result<Inspected> {
    let format = match engine {
        Engine::Docker => "{{.Config.User}}|{{.Config.Entrypoint}}|{{.Size}}",
        Engine::Buildah => "{{.OCIv1.Config.User}}|{{.OCIv1.Config.Entrypoint}}|",
    };
    let text = match engine {
        Engine::Docker => sh.run(&["docker", "image", "inspect", "--format", format, tag])?,
        Engine::Buildah => sh.run(&["buildah", "inspect", "--format", format, tag])?,
    };
    let mut parts = text.trim().splitn(3, '|');
    let user = parts.next().unwrap_or_default().to_string();
    let entrypoint = parts.next().unwrap_or_default().to_string();
    let mut size = parts.next().unwrap_or_default().to_string();
    if engine == Engine::Buildah {
        size = sh
            .run(&["buildah", "images", "--format", "{{.Size}}", tag])?
            .trim()
            .to_string();
    }
    Ok(Inspected {
        user,
        entrypoint,
        size,
    })
}

/// An image size as the engines print it (`8.47 MB`, `950 kB`, or bytes), in MB.
pub fn size_mb(size: &str) -> Option<f64> {
    let size = size.trim();
    if let Ok(bytes) = size.parse::<f64>() {
        return Some(bytes / 1e6);
    }
    let (number, unit) = size.split_once(' ')?;
    let n: f64 = number.trim().parse().ok()?;
    let factor = match unit.trim() {
        "B" => 1e-6,
        "kB" | "KB" => 1e-3,
        "MB" => 1.0,
        "GB" => 1e3,
        _ => return None,
    };
    Some(n * factor)
}

/// Refuses an image that would run as root or has no entrypoint.
pub fn check(sh: &Shell, engine: Engine, tag: &str, entrypoint: &str) -> Result<Inspected> {
    let i = inspect(sh, engine, tag)?;
    if sh.dry_run {
        return Ok(i);
    }
    if i.user != UID {
        bail!("{tag}: runs as {:?}, not the non-root {UID}", i.user);
    }
    if !i.entrypoint.contains(entrypoint) {
        bail!("{tag}: entrypoint {} is not {entrypoint}", i.entrypoint);
    }
    Ok(i)
}

/// The server image of one row.
pub fn server(sh: &Shell, engine: Engine, root: &Path, row: &Row, tag: &str) -> Result<Inspected> {
    let binary = static_build(sh, root, "perflab", &row.features)?;
    let ctx = root.join("target/images").join(row.slug());
    let rootfs = ctx.join("rootfs");
    if !sh.dry_run {
        fresh_dir(&ctx)?;
        base_files(&rootfs)?;
        copy_into(&binary, &rootfs, "/perflab")?;
    }
    build_image(sh, engine, root, "Containerfile.server", &ctx, tag)?;
    check(sh, engine, tag, "/perflab")
}

/// The app image of one row: ours, built with the row's features; for an external
/// row without `image`, its peer's (`peers/<name>/`), from
/// `k8s/images/Containerfile.<name>`; or None: the external row's own `image`, which
/// the cluster pulls as named.
pub fn row_image(
    sh: &Shell,
    engine: Engine,
    root: &Path,
    row: &Row,
    tag: &str,
) -> Result<Option<Inspected>> {
    let Some(e) = &row.external else {
        return server(sh, engine, root, row, tag).map(Some);
    };
    match (&e.image, e.peer()) {
        (Some(_), _) => Ok(None),
        (None, Some(name)) => peer(sh, engine, root, name, tag).map(Some),
        (None, None) => bail!(
            "an external row needs `image` on --target k8s (or to run a peer of this repository)"
        ),
    }
}

/// The image of peer `name`, from `k8s/images/Containerfile.<name>` with the peer's
/// folder as its context.
fn peer(sh: &Shell, engine: Engine, root: &Path, name: &str, tag: &str) -> Result<Inspected> {
    let file = format!("Containerfile.{name}");
    if !root.join("k8s/images").join(&file).is_file() {
        bail!("peer {name} has no k8s/images/{file}: give the row an `image`");
    }
    let ctx = root.join("target/images").join(format!("peer-{name}"));
    if !sh.dry_run {
        fresh_dir(&ctx)?;
        for entry in std::fs::read_dir(root.join("peers").join(name))? {
            let path = entry?.path();
            if path.is_file() {
                std::fs::copy(&path, ctx.join(path.file_name().unwrap_or_default()))?;
            }
        }
    }
    build_image(sh, engine, root, &file, &ctx, tag)?;
    check(sh, engine, tag, "/opt/peer/run")
}

/// The load-generator image: `lab` (static) and oha with its shared libraries.
pub fn loadgen(
    sh: &Shell,
    engine: Engine,
    root: &Path,
    oha: &Path,
    tag: &str,
) -> Result<Inspected> {
    let lab = static_build(sh, root, "lab", &[])?;
    let ctx = root.join("target/images/loadgen");
    let rootfs = ctx.join("rootfs");
    if !sh.dry_run {
        fresh_dir(&ctx)?;
        base_files(&rootfs)?;
        std::fs::create_dir_all(rootfs.join("work"))?;
        copy_into(&lab, &rootfs, "/usr/local/bin/lab")?;
        copy_into(oha, &rootfs, "/usr/local/bin/oha")?;
        for lib in shared_libraries(oha)? {
            copy_into(&lib, &rootfs, &lib.to_string_lossy())?;
        }
    }
    build_image(sh, engine, root, "Containerfile.loadgen", &ctx, tag)?;
    check(sh, engine, tag, "/usr/local/bin/lab")
}

/// Makes an image available to the cluster: push to a registry, or load it into a
/// local cluster's nodes.
pub fn publish(
    sh: &Shell,
    engine: Engine,
    root: &Path,
    tag: &str,
    load: Option<&str>,
) -> Result<()> {
    let archive = root.join("target/images/transfer.tar");
    let archive_s = archive.to_string_lossy().to_string();
    let save = |sh: &Shell| -> Result<()> {
        let _ = std::fs::remove_file(&archive);
        match engine {
            Engine::Docker => sh.run(&["docker", "save", "-o", &archive_s, tag])?,
            Engine::Buildah => sh.run(&[
                "buildah",
                "push",
                "--quiet",
                tag,
                &format!("docker-archive:{archive_s}:{tag}"),
            ])?,
        };
        Ok(())
    };
    match (load, engine) {
        (None, Engine::Docker) => sh.run(&["docker", "push", tag])?,
        (None, Engine::Buildah) => sh.run(&["buildah", "push", tag, &format!("docker://{tag}")])?,
        (Some("kind"), Engine::Docker) => sh.run(&["kind", "load", "docker-image", tag])?,
        (Some("kind"), Engine::Buildah) => {
            save(sh)?;
            sh.run(&["kind", "load", "image-archive", &archive_s])?
        }
        (Some("k3d"), _) => {
            save(sh)?;
            sh.run(&["k3d", "image", "import", &archive_s])?
        }
        (Some("minikube"), Engine::Docker) => sh.run(&["minikube", "image", "load", tag])?,
        (Some("minikube"), Engine::Buildah) => {
            save(sh)?;
            sh.run(&["minikube", "image", "load", &archive_s])?
        }
        (Some(other), _) => bail!("unknown --load {other:?} (kind, k3d or minikube)"),
    };
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn finds_the_libraries_of_a_dynamic_binary() {
        let libs = super::shared_libraries(std::path::Path::new("/bin/sh")).unwrap();
        assert!(libs.iter().any(|l| l.to_string_lossy().contains("libc.so")));
        assert!(libs
            .iter()
            .any(|l| l.to_string_lossy().contains("ld-linux")));
    }
}
