//! `cargo xtask vm-test`: the real-kernel tests again, inside a VM booted
//! on Debian's stock 6.1 kernel under QEMU TCG, as aya's CI does.
//!
//! That kernel allows fentry (this host does not), so the timewait tests run
//! there in the exact mode, and the tracepoint tests check the record
//! offsets read at run time on another kernel. The kernel package is pinned
//! to one Debian version so that runs repeat; it and the initramfs are
//! cached under [`CACHE_DIR`] between runs.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    hash::{DefaultHasher, Hash as _, Hasher as _},
    io::{BufRead as _, BufReader, Write as _},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use crate::{capture, cargo, run_cmd, setup::apt_install};

/// One kernel per row of the README's compatibility table.
pub struct Kernel {
    pub package: &'static str,
    pub version: &'static str,
    pub release: &'static str,
}

/// Debian 12's stock kernel: the one fentry scenarios are tested on.
pub const DEBIAN_6_1: Kernel = Kernel {
    package: "linux-image-6.1.0-50-amd64-unsigned",
    version: "6.1.176-1",
    release: "6.1.0-50-amd64",
};

pub const CACHE_DIR: &str = "/var/cache/tcpstate-vm";
const QEMU: &str = "qemu-system-x86_64";
const BUSYBOX: &str = "/bin/busybox";
/// The whole VM run, boot to power-off; a hang fails the run.
const VM_TIMEOUT: Duration = Duration::from_secs(15 * 60);
const RESULT_TAG: &str = "tcpstate-vm: result ";
const ATTACH_TAG: &str = "tcpstate-vm: attach ";
/// Every test deadline is multiplied by this in the VM: QEMU's emulation
/// makes attaching a tracer ~40x slower than on the host (10-11 s), and the
/// tests' bases leave ~6x room.
const VM_TIME_SCALE: u32 = 5;

/// The integration-test binaries run in the VM, and tests left out there.
/// The 60 s expiry test is left to the host: in the VM, scenario b's
/// FIN_WAIT2 timeout exercises the same expiry hook in 2 s.
const VM_TESTS: [(&str, &[&str]); 4] =
    [("trace", &[]), ("aggregate", &[]), ("census", &[]), ("timewait", &["f_time_wait_expires_after_60s"])];

/// What the tests run besides tcpstate: QEMU and a static busybox for the
/// VM, Prometheus (and promtool) for the exporter's test.
const TEST_PACKAGES: [&str; 3] = ["qemu-system-x86", "busybox-static", "prometheus"];

/// Installs the test packages, and fetches the VM's kernel (idempotent).
pub fn setup() -> anyhow::Result<()> {
    // By package, not by path: Debian's other busybox is dynamically linked
    // and would not run in the initramfs.
    let missing: Vec<&str> = TEST_PACKAGES.into_iter().filter(|p| !package_installed(p)).collect();
    if missing.is_empty() {
        println!("setup: {} are installed", TEST_PACKAGES.join(", "));
    } else {
        apt_install(&missing)?;
    }
    kernel_files(&DEBIAN_6_1)?;
    println!("setup: kernel {} is cached in {CACHE_DIR}", DEBIAN_6_1.release);
    Ok(())
}

fn package_installed(package: &str) -> bool {
    capture(Command::new("dpkg-query").args(["-W", "-f", "${Status}", package]))
        .is_ok_and(|status| status.ends_with("install ok installed"))
}

fn which(program: &str) -> Option<PathBuf> {
    if program.starts_with('/') {
        return Path::new(program).is_file().then(|| program.into());
    }
    let path = capture(Command::new("sh").args(["-c", &format!("command -v {program}")])).ok()?;
    Some(PathBuf::from(path.trim())).filter(|p| p.is_file())
}

/// sock_diag for TCP is modular in Debian's kernels (the host's loads them
/// on demand through modprobe; the VM's init loads them).
const MODULES: [&str; 2] = ["net/ipv4/inet_diag.ko", "net/ipv4/tcp_diag.ko"];

/// What the VM boots: from the cached package, the kernel image, its
/// config, and the modules the tests need.
struct KernelFiles {
    vmlinuz: PathBuf,
    config: PathBuf,
    modules: Vec<PathBuf>,
}

fn kernel_files(kernel: &Kernel) -> anyhow::Result<KernelFiles> {
    let dir = Path::new(CACHE_DIR).join(kernel.release);
    let modules_dir = dir.join("modules");
    let files = KernelFiles {
        vmlinuz: dir.join(format!("boot/vmlinuz-{}", kernel.release)),
        config: dir.join(format!("boot/config-{}", kernel.release)),
        modules: MODULES.iter().map(|m| modules_dir.join(Path::new(m).file_name().unwrap())).collect(),
    };
    if files.vmlinuz.is_file() && files.config.is_file() && files.modules.iter().all(|m| m.is_file()) {
        return Ok(files);
    }
    fs::create_dir_all(&dir)?;
    let deb = format!("{}_{}_amd64.deb", kernel.package, kernel.version);
    if !dir.join(&deb).is_file() {
        println!("setup: fetching {}={} through apt", kernel.package, kernel.version);
        let download = || {
            run_cmd(
                Command::new("apt-get")
                    .args(["download", "-qq", &format!("{}={}", kernel.package, kernel.version)])
                    .current_dir(&dir),
            )
        };
        // The package lists may be empty or stale: refresh them once.
        if download().is_err() {
            run_cmd(Command::new("apt-get").args(["update", "-qq"]))?;
            download().with_context(|| {
                format!(
                    "{}={} is not in Debian's package lists any more; pin a current one in xtask/src/vm.rs",
                    kernel.package, kernel.version
                )
            })?;
        }
    }
    run_cmd(Command::new("dpkg-deb").arg("-x").arg(dir.join(&deb)).arg(&dir))?;
    // Keep only what is used: all the modules take 400 MB.
    fs::create_dir_all(&modules_dir)?;
    for (module, kept) in MODULES.iter().zip(&files.modules) {
        fs::copy(dir.join(format!("lib/modules/{}/kernel/{module}", kernel.release)), kept)?;
    }
    let _ = fs::remove_dir_all(dir.join("lib"));
    let _ = fs::remove_file(dir.join(&deb));
    Ok(files)
}

/// Builds the integration tests and returns each VM test binary, and the
/// peer binary they spawn.
/// Each test binary by its target name.
type TestBinaries = Vec<(String, PathBuf)>;

fn build_tests() -> anyhow::Result<(TestBinaries, Vec<PathBuf>)> {
    let out = capture(cargo().args([
        "test",
        "--package",
        "tcpstate-tests",
        "--no-run",
        "--message-format=json-render-diagnostics",
    ]))?;
    let mut found = Vec::new();
    for line in out.lines() {
        let Ok(msg) = serde_json::from_str::<serde_json::Value>(line) else { continue };
        let name = msg["target"]["name"].as_str().unwrap_or_default();
        let is_test = msg["profile"]["test"].as_bool() == Some(true)
            && msg["target"]["kind"].as_array().is_some_and(|k| k.iter().any(|k| k == "test"));
        if is_test
            && VM_TESTS.iter().any(|(t, _)| *t == name)
            && let Some(exe) = msg["executable"].as_str()
        {
            found.push((name.to_string(), PathBuf::from(exe)));
        }
    }
    if found.len() != VM_TESTS.len() {
        bail!("expected test binaries {:?}, cargo built {found:?}", VM_TESTS.map(|(t, _)| t));
    }
    run_cmd(cargo().args(["build", "--package", "tcpstate"]))?;
    // The tests find the peer next to their deps/ directory; the tool
    // itself is there too.
    let target = found[0].1.parent().and_then(Path::parent).context("target dir")?.to_path_buf();
    let extras: Vec<PathBuf> = ["tcpstate-peer", "tcpstate"].iter().map(|b| target.join(b)).collect();
    if let Some(missing) = extras.iter().find(|b| !b.is_file()) {
        bail!("{} was not built", missing.display());
    }
    Ok((found, extras))
}

/// The shared libraries `binary` loads, with the dynamic loader.
fn libraries(binary: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let out = capture(Command::new("ldd").arg(binary))?;
    Ok(out
        .lines()
        .filter_map(|l| {
            let l = l.trim();
            let path = match l.split_once("=>") {
                Some((_, rest)) => rest.split_whitespace().next()?,
                None => l.split_whitespace().next()?,
            };
            path.starts_with('/').then(|| PathBuf::from(path))
        })
        .collect())
}

fn init_script(tests: &[(String, PathBuf)], tcpstate: &Path) -> String {
    let mut script = String::from(
        r#"#!/bin/busybox sh
/bin/busybox --install -s /bin
# iproute2's ip first: busybox's has no `netns`.
export PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
# No tmpfs on /tmp: the test binaries may live under it (a checkout in
# /tmp), and the initramfs root is writable anyway.
mount -t tmpfs run /run
# Pure cgroup v2, as most hosts have it now (owners' cgroups, by container).
mount -t cgroup2 cgroup2 /sys/fs/cgroup
mkdir -p /var /root && ln -s /run /var/run
for m in /modules/*.ko; do insmod "$m"; done
ip link set lo up
echo "tcpstate-vm: kernel $(uname -r)"
export TCPSTATE_REQUIRE_KERNEL_TESTS=1 TCPSTATE_EXPECT_TW_MODE=fentry RUST_BACKTRACE=1
export TCPSTATE_TEST_ATTACH_LOG=/run/attach.log
"#,
    );
    script.push_str(&format!("export TCPSTATE_TEST_TIME_SCALE={VM_TIME_SCALE}\n"));
    // What the tool finds on this kernel, for the log: its start-up line
    // says how timewait sockets are followed.
    script
        .push_str(&format!("RUST_LOG=info {} trace --duration 1 --port 9 > /dev/null\n", tcpstate.display()));
    for (name, exe) in tests {
        let skips: String = VM_TESTS
            .iter()
            .find(|(t, _)| t == name)
            .map(|(_, skips)| skips.iter().map(|s| format!(" --skip {s}")).collect())
            .unwrap_or_default();
        script.push_str(&format!(
            "{} --test-threads=1{skips}; echo \"{RESULT_TAG}{name} $?\"\n",
            exe.display()
        ));
    }
    script.push_str(&format!("sed 's/^/{ATTACH_TAG}/' /run/attach.log\n"));
    script.push_str("echo 'tcpstate-vm: done'\npoweroff -f\n");
    script
}

/// The initramfs: busybox, iproute2, the kernel's config, the test
/// binaries at their host paths, and every library they load. Cached by a
/// hash of its contents.
fn initramfs(
    kernel: &KernelFiles,
    tests: &[(String, PathBuf)],
    extras: &[PathBuf],
) -> anyhow::Result<PathBuf> {
    // Destination path in the image → source file.
    let mut files: BTreeMap<PathBuf, PathBuf> = BTreeMap::new();
    let tools: Vec<PathBuf> = ["ip", "ss"]
        .iter()
        .map(|t| which(t).with_context(|| format!("{t} (iproute2) is missing")))
        .collect::<anyhow::Result<_>>()?;
    let mut binaries: Vec<PathBuf> = tests.iter().map(|(_, exe)| exe.clone()).collect();
    binaries.extend_from_slice(extras);
    binaries.extend(tools);
    let mut libs = BTreeSet::new();
    for binary in &binaries {
        libs.extend(libraries(binary)?);
        files.insert(binary.clone(), binary.clone());
    }
    for lib in libs {
        files.insert(lib.clone(), fs::canonicalize(&lib)?);
    }
    files.insert(BUSYBOX.into(), BUSYBOX.into());
    // tcpstate reads CONFIG_HZ from it.
    files.insert(
        PathBuf::from("/boot").join(kernel.config.file_name().context("config name")?),
        kernel.config.clone(),
    );
    for module in &kernel.modules {
        files.insert(Path::new("/modules").join(module.file_name().context("module name")?), module.clone());
    }
    let tcpstate = extras.iter().find(|b| b.ends_with("tcpstate")).context("tcpstate binary")?;
    let init = init_script(tests, tcpstate);

    let mut hasher = DefaultHasher::new();
    init.hash(&mut hasher);
    for (dest, src) in &files {
        dest.hash(&mut hasher);
        fs::read(src).with_context(|| format!("reading {}", src.display()))?.hash(&mut hasher);
    }
    let image = Path::new(CACHE_DIR).join(format!("initramfs-{:016x}.cpio", hasher.finish()));
    if image.is_file() {
        println!("vm-test: initramfs is cached ({})", image.display());
        return Ok(image);
    }
    // Older images are stale: keep one.
    for old in fs::read_dir(CACHE_DIR)?.flatten() {
        if old.file_name().to_string_lossy().starts_with("initramfs-") {
            let _ = fs::remove_file(old.path());
        }
    }
    let root = Path::new(CACHE_DIR).join("rootfs");
    let _ = fs::remove_dir_all(&root);
    for dir in ["proc", "sys", "dev", "tmp", "run", "bin", "sbin"] {
        fs::create_dir_all(root.join(dir))?;
    }
    for (dest, src) in &files {
        let at = root.join(dest.strip_prefix("/")?);
        fs::create_dir_all(at.parent().context("parent")?)?;
        fs::copy(src, &at).with_context(|| format!("copying {}", src.display()))?;
    }
    // Debug info is most of a test binary and of no use in the VM.
    for exe in tests.iter().map(|(_, exe)| exe).chain(extras) {
        run_cmd(Command::new("strip").arg("--strip-debug").arg(root.join(exe.strip_prefix("/")?)))?;
    }
    let init_path = root.join("init");
    fs::write(&init_path, init)?;
    run_cmd(Command::new("chmod").arg("755").arg(&init_path))?;
    let partial = image.with_extension("partial");
    let out = fs::File::create(&partial)?;
    let list = capture(Command::new("find").arg(".").current_dir(&root))?;
    let mut cpio = Command::new(BUSYBOX)
        .args(["cpio", "-o", "-H", "newc"])
        .current_dir(&root)
        .stdin(Stdio::piped())
        .stdout(out)
        .stderr(Stdio::null())
        .spawn()?;
    cpio.stdin.take().context("stdin")?.write_all(list.as_bytes())?;
    if !cpio.wait()?.success() {
        bail!("cpio failed");
    }
    fs::rename(&partial, &image)?;
    let _ = fs::remove_dir_all(&root);
    Ok(image)
}

/// Boots the VM, streams its console, and returns each test binary's exit
/// code as the init script reported it.
/// What one boot reported: each test binary's exit code, and the attach
/// times ("COMMAND SECONDS" lines).
struct Boot {
    results: BTreeMap<String, i32>,
    attach_log: String,
}

fn boot(kernel: &Kernel, vmlinuz: &Path, initramfs: &Path) -> anyhow::Result<Boot> {
    let mut qemu = Command::new(QEMU)
        .args(["-accel", "tcg", "-cpu", "max", "-smp", "2", "-m", "3072"])
        .args(["-nographic", "-no-reboot", "-net", "none"])
        .arg("-kernel")
        .arg(vmlinuz)
        .arg("-initrd")
        .arg(initramfs)
        .args(["-append", "console=ttyS0 panic=-1 quiet"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .context("starting qemu-system-x86_64")?;
    let stdout = qemu.stdout.take().context("qemu stdout")?;
    let (lines, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if lines.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + VM_TIMEOUT;
    let mut results = BTreeMap::new();
    let mut attach_log = String::new();
    let (mut release, mut done) = (None, false);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => {
                println!("vm| {line}");
                // The firmware's escape codes may lead the first line.
                if let Some((_, r)) = line.split_once("tcpstate-vm: kernel ") {
                    release = Some(r.trim().to_string());
                } else if let Some(rest) = line.strip_prefix(RESULT_TAG)
                    && let Some((name, code)) = rest.trim().rsplit_once(' ')
                {
                    results.insert(name.to_string(), code.parse().unwrap_or(-1));
                } else if let Some(rest) = line.strip_prefix(ATTACH_TAG) {
                    attach_log.push_str(rest.trim());
                    attach_log.push('\n');
                } else if line.starts_with("tcpstate-vm: done") {
                    done = true;
                }
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                let _ = qemu.kill();
                bail!("the VM did not finish within {VM_TIMEOUT:?}");
            }
        }
    }
    let _ = qemu.wait();
    if release.as_deref() != Some(kernel.release) {
        bail!("the VM booted {release:?}, not {}", kernel.release);
    }
    if !done {
        bail!("the VM stopped before its tests finished");
    }
    Ok(Boot { results, attach_log })
}

pub fn vm_test() -> anyhow::Result<()> {
    vm_test_repeated(1)
}

/// Boots the VM `runs` times on one build, and fails unless every run
/// passed.
pub fn vm_test_repeated(runs: u32) -> anyhow::Result<()> {
    let kernel = &DEBIAN_6_1;
    let files = kernel_files(kernel)?;
    let (tests, extras) = build_tests()?;
    let image = initramfs(&files, &tests, &extras)?;
    let (mut passed, mut attach_log) = (0, String::new());
    for run in 1..=runs {
        let started = Instant::now();
        let boot = boot(kernel, &files.vmlinuz, &image)?;
        println!("vm-test: {} in {:.0?}", kernel.release, started.elapsed());
        attach_log.push_str(&boot.attach_log);
        let mut failed = Vec::new();
        for (name, _) in &tests {
            match boot.results.get(name) {
                Some(0) => println!("vm-test: {name}: passed"),
                Some(code) => failed.push(format!("{name} (exit {code})")),
                None => failed.push(format!("{name} (no result)")),
            }
        }
        println!("vm-test: {}", crate::slowest_attach(&boot.attach_log));
        if failed.is_empty() {
            passed += 1;
        } else if runs == 1 {
            bail!("on {}: {}", kernel.release, failed.join(", "));
        } else {
            println!("vm-test: run {run}/{runs} FAILED on {}: {}", kernel.release, failed.join(", "));
        }
    }
    if runs > 1 {
        println!("vm-test: {passed} of {runs} runs passed; {}", crate::slowest_attach(&attach_log));
        if passed < runs {
            bail!("{} of {runs} VM runs failed", runs - passed);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_runs_each_test_and_reports_it() {
        let tests = [("timewait".to_string(), PathBuf::from("/t/deps/timewait-1"))];
        let script = init_script(&tests, Path::new("/t/tcpstate"));
        assert!(script.contains(
            "/t/deps/timewait-1 --test-threads=1 --skip f_time_wait_expires_after_60s; echo \"tcpstate-vm: result timewait $?\""
        ));
        assert!(script.trim_end().ends_with("poweroff -f"));
    }
}
