//! `cargo xtask package`: a Debian package with the release binary, its man
//! pages and shell completions (generated from the same clap definitions
//! that parse the command line), the systemd unit for `tcpstate export`, and
//! the licenses. `check` installs it into an empty root with dpkg and runs
//! it there under chroot.

use std::{
    fs,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};

use crate::{capture, run_cmd, workspace_root};

/// Where the package's files are staged, and the .deb written.
fn out_dir() -> PathBuf {
    workspace_root().join("target/package")
}

/// The subcommands that get a page of their own, from `tcpstate --help`.
fn subcommands(bin: &Path) -> anyhow::Result<Vec<String>> {
    let help = capture(Command::new(bin).arg("--help"))?;
    let listed = help.lines().skip_while(|l| !l.starts_with("Commands:")).skip(1);
    Ok(listed
        .take_while(|l| l.starts_with("  "))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|name| *name != "help")
        .map(String::from)
        .collect())
}

/// The newest glibc symbol version the binary needs: the package's
/// dependency, so that dpkg refuses a system too old to run it.
fn glibc_needed(bin: &Path) -> anyhow::Result<Option<String>> {
    let symbols = capture(Command::new("objdump").arg("-T").arg(bin))?;
    let mut versions: Vec<Vec<u32>> = symbols
        .split_whitespace()
        .filter_map(|w| w.strip_prefix("(GLIBC_").or_else(|| w.strip_prefix("GLIBC_")))
        .map(|v| v.trim_end_matches(')'))
        .filter_map(|v| v.split('.').map(str::parse).collect::<Result<Vec<u32>, _>>().ok())
        .collect();
    versions.sort();
    Ok(versions.last().map(|v| v.iter().map(u32::to_string).collect::<Vec<_>>().join(".")))
}

fn write(path: &Path, contents: impl AsRef<[u8]>, mode: u32) -> anyhow::Result<()> {
    fs::create_dir_all(path.parent().expect("a file in a directory"))?;
    fs::write(path, contents).with_context(|| format!("writing {}", path.display()))?;
    fs::set_permissions(path, fs::Permissions::from_mode(mode))?;
    Ok(())
}

fn generated(bin: &Path, args: &[&str]) -> anyhow::Result<String> {
    capture(Command::new(bin).arg("generate").args(args))
}

/// Builds the release binary and the .deb; returns the .deb's path.
pub fn package() -> anyhow::Result<PathBuf> {
    let bin = crate::build()?;
    let version = capture(Command::new(&bin).arg("--version"))?;
    let version = version.trim().strip_prefix("tcpstate ").context("tcpstate --version")?.to_string();
    let arch = capture(Command::new("dpkg").arg("--print-architecture"))?.trim().to_string();
    let name = format!("tcpstate_{version}_{arch}");
    let root = out_dir().join(&name);
    if root.exists() {
        fs::remove_dir_all(&root)?;
    }

    write(&root.join("usr/bin/tcpstate"), fs::read(&bin)?, 0o755)?;
    let man = root.join("usr/share/man/man8");
    let mut pages = vec![("tcpstate".to_string(), generated(&bin, &["man"])?)];
    for sub in subcommands(&bin)? {
        pages.push((format!("tcpstate-{sub}"), generated(&bin, &["man", "--command", &sub])?));
    }
    for (page, text) in pages {
        let path = man.join(format!("{page}.8"));
        write(&path, text, 0o644)?;
        run_cmd(Command::new("gzip").args(["-9n", "-f"]).arg(&path))?;
    }
    let share = root.join("usr/share");
    write(&share.join("bash-completion/completions/tcpstate"), generated(&bin, &["complete-bash"])?, 0o644)?;
    write(&share.join("zsh/vendor-completions/_tcpstate"), generated(&bin, &["complete-zsh"])?, 0o644)?;
    write(
        &share.join("fish/vendor_completions.d/tcpstate.fish"),
        generated(&bin, &["complete-fish"])?,
        0o644,
    )?;

    let unit = fs::read_to_string(workspace_root().join("deploy/tcpstate-export.service"))?;
    let unit = unit.replace("/usr/local/bin/tcpstate", "/usr/bin/tcpstate").replace(
        "Install the binary as\n# /usr/local/bin/tcpstate, then:",
        "Installed by the package; then:",
    );
    write(&root.join("lib/systemd/system/tcpstate-export.service"), unit, 0o644)?;

    let license = |file: &str| fs::read_to_string(workspace_root().join(file));
    let copyright = format!(
        "{}\n--- LICENSE-MIT ---\n\n{}\n--- LICENSE-GPL-2.0 ---\n\nOn Debian systems, the GNU General Public License version 2 is in \
         /usr/share/common-licenses/GPL-2.\n",
        license("LICENSE")?,
        license("LICENSE-MIT")?
    );
    write(&root.join("usr/share/doc/tcpstate/copyright"), copyright, 0o644)?;

    let depends = glibc_needed(&bin)?.map_or("libc6".to_string(), |v| format!("libc6 (>= {v})"));
    let size_kib = fs::metadata(&bin)?.len().div_ceil(1024);
    let control = format!(
        "Package: tcpstate\n\
         Version: {version}\n\
         Architecture: {arch}\n\
         Maintainer: tcpstate maintainers <maintainers@users.noreply.github.com>\n\
         Depends: {depends}\n\
         Installed-Size: {size_kib}\n\
         Section: net\n\
         Priority: optional\n\
         Description: TCP state transition tracer on eBPF\n \
         Traces every TCP state transition with its real owner and close side,\n \
         follows connections into TIME_WAIT and FIN_WAIT2, reports who produces\n \
         TIME_WAIT, and serves Prometheus metrics. Needs Linux 5.8 or later.\n"
    );
    write(&root.join("DEBIAN/control"), control, 0o644)?;

    let deb = out_dir().join(format!("{name}.deb"));
    run_cmd(Command::new("dpkg-deb").args(["--root-owner-group", "--build"]).arg(&root).arg(&deb))?;
    println!("xtask: built {}", deb.display());
    Ok(deb)
}

/// Installs the package into an empty root with dpkg, then runs
/// `tcpstate --version` and `tcpstate census` there under chroot (with the
/// C libraries it links copied in), and checks the man pages, completions
/// and unit landed where they belong. Root only (chroot).
pub fn check(deb: &Path) -> anyhow::Result<()> {
    let root = out_dir().join("chroot");
    if root.exists() {
        fs::remove_dir_all(&root)?;
    }
    let admin = root.join("var/lib/dpkg");
    for dir in ["info", "updates", "triggers"] {
        fs::create_dir_all(admin.join(dir))?;
    }
    fs::write(admin.join("status"), "")?;
    // libc6 is the host's, copied below, not a package in this root.
    run_cmd(
        Command::new("dpkg")
            .arg(format!("--root={}", root.display()))
            .args(["--force-depends", "-i"])
            .arg(deb),
    )?;
    let installed =
        capture(Command::new("dpkg").arg(format!("--root={}", root.display())).args(["-L", "tcpstate"]))?;
    for path in [
        "/usr/bin/tcpstate",
        "/usr/share/man/man8/tcpstate.8.gz",
        "/usr/share/man/man8/tcpstate-trace.8.gz",
        "/usr/share/bash-completion/completions/tcpstate",
        "/usr/share/zsh/vendor-completions/_tcpstate",
        "/usr/share/fish/vendor_completions.d/tcpstate.fish",
        "/lib/systemd/system/tcpstate-export.service",
        "/usr/share/doc/tcpstate/copyright",
    ] {
        if !installed.lines().any(|l| l == path) {
            bail!("{path} is not in the installed package:\n{installed}");
        }
    }
    let unit = fs::read_to_string(root.join("lib/systemd/system/tcpstate-export.service"))?;
    if !unit.contains("ExecStart=/usr/bin/tcpstate export") {
        bail!("the unit does not start the installed binary:\n{unit}");
    }

    // The shared libraries the binary links, at the same paths.
    let bin = root.join("usr/bin/tcpstate");
    let ldd = capture(Command::new("ldd").arg(&bin))?;
    for lib in ldd.split_whitespace().filter(|w| w.starts_with('/')) {
        let target = root.join(lib.trim_start_matches('/'));
        fs::create_dir_all(target.parent().expect("a library in a directory"))?;
        fs::copy(lib, &target).with_context(|| format!("copying {lib}"))?;
    }
    let version = capture(Command::new("chroot").arg(&root).args(["/usr/bin/tcpstate", "--version"]))?;
    if !version.starts_with("tcpstate ") {
        bail!("tcpstate --version in the chroot said {version:?}");
    }
    let census = capture(Command::new("chroot").arg(&root).args(["/usr/bin/tcpstate", "census", "--json"]))?;
    let doc: serde_json::Value = serde_json::from_str(&census).context("census --json in the chroot")?;
    if !doc["total"].is_u64() {
        bail!("census in the chroot: {census}");
    }
    // The bash completion loads and completes the subcommands.
    let completion = root.join("usr/share/bash-completion/completions/tcpstate");
    let words = capture(Command::new("bash").arg("-c").arg(format!(
        "source {} && COMP_WORDS=(tcpstate st) COMP_CWORD=1 && _tcpstate tcpstate st tcpstate && echo \"${{COMPREPLY[@]}}\"",
        completion.display()
    )))?;
    if !words.split_whitespace().any(|w| w == "stats") {
        bail!("bash completion of `tcpstate st` gave {words:?}");
    }
    println!(
        "xtask: package installed into {} and ran there: {} (census: {} sockets)",
        root.display(),
        version.trim(),
        doc["total"]
    );
    Ok(())
}
