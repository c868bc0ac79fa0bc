//! The walls a slot process puts up around itself before it reads its first request, behind
//! the sandbox's own: prctl flags, rlimits, and a seccomp filter refusing (`EPERM`) what only
//! an escaped guest would do. The filter is a deny-list, not an allow-list, so it need not
//! follow every system call wasmtime and the C library make as they change; it takes from an
//! escaped guest what would let it reach past the process: starting programs or processes,
//! sockets, writing or removing files, signalling or tracing other processes, privileges,
//! namespaces, and the kernel's larger attack surfaces (BPF, io_uring, perf, user faults).
//!
//! `spare sandbox-slot --check-walls` puts them up and tries what they forbid (the test of this
//! file, through the real binary: a filter cannot be tried inside a test harness's process).

/// Descriptors a slot process may hold beyond one per module kept in memory (wasmtime may
/// hold a module's memory image in a memfd): its pipes, stderr, a cache file while it loads.
pub(crate) const SLOT_FILES: u64 = 64;

/// Puts the walls up: `files` is how many descriptors the process may hold. Everything but the
/// filter is best effort; the filter's error is returned (a kernel without seccomp).
pub(crate) fn put_up(files: u64) -> Result<(), String> {
    #[cfg(target_os = "linux")]
    // SAFETY: prctl and setrlimit take plain integers and a struct on this stack.
    unsafe {
        // Dies with the slot thread that started it, should the peer go without killing it.
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
        libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0);
        libc::prctl(libc::PR_SET_DUMPABLE, 0);
        for (resource, limit) in [(libc::RLIMIT_CORE, 0), (libc::RLIMIT_NOFILE, files)] {
            let lim = libc::rlimit { rlim_cur: limit, rlim_max: limit };
            libc::setrlimit(resource, &lim);
        }
    }
    filter::install()
}

#[cfg(target_os = "linux")]
mod filter {
    use std::collections::BTreeMap;

    use seccompiler::{
        BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter, SeccompRule,
        TargetArch,
    };

    /// Refused whatever their arguments.
    const ALWAYS: &[libc::c_long] = &[
        // Programs and processes (threads are `clone` with `CLONE_THREAD`, below).
        libc::SYS_execve,
        libc::SYS_execveat,
        // The network (`socketpair` stays: a connected pair reaches nothing, and the async
        // runtime wasmtime-wasi starts makes one for its signal handling).
        libc::SYS_socket,
        libc::SYS_connect,
        libc::SYS_bind,
        libc::SYS_listen,
        libc::SYS_accept,
        libc::SYS_accept4,
        // Other processes.
        libc::SYS_ptrace,
        libc::SYS_process_vm_readv,
        libc::SYS_process_vm_writev,
        libc::SYS_pidfd_open,
        libc::SYS_pidfd_getfd,
        libc::SYS_tkill,
        libc::SYS_rt_sigqueueinfo,
        libc::SYS_rt_tgsigqueueinfo,
        // Files and the file system (opening for reading stays: modules load from the cache).
        libc::SYS_openat2,
        libc::SYS_unlinkat,
        libc::SYS_renameat,
        libc::SYS_renameat2,
        libc::SYS_mkdirat,
        libc::SYS_linkat,
        libc::SYS_symlinkat,
        libc::SYS_fchmod,
        libc::SYS_fchmodat,
        libc::SYS_fchown,
        libc::SYS_fchownat,
        libc::SYS_truncate,
        libc::SYS_mknodat,
        libc::SYS_mount,
        libc::SYS_umount2,
        libc::SYS_pivot_root,
        libc::SYS_chroot,
        libc::SYS_name_to_handle_at,
        libc::SYS_open_by_handle_at,
        // Privileges, namespaces and the kernel's larger surfaces.
        libc::SYS_setuid,
        libc::SYS_setgid,
        libc::SYS_setreuid,
        libc::SYS_setregid,
        libc::SYS_setresuid,
        libc::SYS_setresgid,
        libc::SYS_setgroups,
        libc::SYS_capset,
        libc::SYS_unshare,
        libc::SYS_setns,
        libc::SYS_bpf,
        libc::SYS_perf_event_open,
        libc::SYS_userfaultfd,
        libc::SYS_io_uring_setup,
        libc::SYS_keyctl,
        libc::SYS_add_key,
        libc::SYS_request_key,
        libc::SYS_init_module,
        libc::SYS_finit_module,
        libc::SYS_delete_module,
        libc::SYS_kexec_load,
        libc::SYS_reboot,
        libc::SYS_swapon,
        libc::SYS_swapoff,
    ];

    /// The older calls x86-64 still has beside their `*at` forms.
    #[cfg(target_arch = "x86_64")]
    const ALWAYS_X86_64: &[libc::c_long] = &[
        libc::SYS_fork,
        libc::SYS_vfork,
        libc::SYS_creat,
        libc::SYS_unlink,
        libc::SYS_rename,
        libc::SYS_mkdir,
        libc::SYS_rmdir,
        libc::SYS_link,
        libc::SYS_symlink,
        libc::SYS_chmod,
        libc::SYS_chown,
        libc::SYS_lchown,
        libc::SYS_mknod,
    ];
    #[cfg(not(target_arch = "x86_64"))]
    const ALWAYS_X86_64: &[libc::c_long] = &[];

    fn cond(arg: u8, op: SeccompCmpOp, value: u64) -> Result<SeccompCondition, String> {
        SeccompCondition::new(arg, SeccompCmpArgLen::Dword, op, value).map_err(|e| e.to_string())
    }

    /// Rules matching a call whose flags argument `arg` has any of the bits of `flags`.
    fn any_flag(arg: u8, flags: &[u64]) -> Result<Vec<SeccompRule>, String> {
        flags
            .iter()
            .map(|&f| SeccompRule::new(vec![cond(arg, SeccompCmpOp::MaskedEq(f), f)?]).map_err(|e| e.to_string()))
            .collect()
    }

    /// A rule matching a call whose argument `arg` is not `value`.
    fn not(arg: u8, value: u64) -> Result<Vec<SeccompRule>, String> {
        Ok(vec![SeccompRule::new(vec![cond(arg, SeccompCmpOp::Ne, value)?]).map_err(|e| e.to_string())?])
    }

    pub(super) fn program() -> Result<BpfProgram, String> {
        let mut rules: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
        for &call in ALWAYS.iter().chain(ALWAYS_X86_64) {
            rules.insert(call, Vec::new());
        }
        let writes = [libc::O_WRONLY as u64, libc::O_RDWR as u64, libc::O_CREAT as u64, libc::O_TRUNC as u64];
        rules.insert(libc::SYS_openat, any_flag(2, &writes)?);
        #[cfg(target_arch = "x86_64")]
        rules.insert(libc::SYS_open, any_flag(1, &writes)?);
        // A new process, not a thread.
        rules.insert(
            libc::SYS_clone,
            vec![
                SeccompRule::new(vec![cond(0, SeccompCmpOp::MaskedEq(libc::CLONE_THREAD as u64), 0)?])
                    .map_err(|e| e.to_string())?,
            ],
        );
        // Signals only to itself (the C library's `raise` and `abort`).
        let me = u64::from(std::process::id());
        rules.insert(libc::SYS_kill, not(0, me)?);
        rules.insert(libc::SYS_tgkill, not(0, me)?);
        let arch = TargetArch::try_from(std::env::consts::ARCH).map_err(|e| e.to_string())?;
        let filter = SeccompFilter::new(rules, SeccompAction::Allow, SeccompAction::Errno(libc::EPERM as u32), arch)
            .map_err(|e| e.to_string())?;
        BpfProgram::try_from(filter).map_err(|e| e.to_string())
    }

    /// `clone3` answered "no such call", so that the C library makes threads (the async
    /// runtime's, started on demand) with `clone`, whose flags the main filter can read; its
    /// flags are in memory, out of a filter's reach, so it cannot be allowed for threads only.
    fn no_clone3() -> Result<BpfProgram, String> {
        let rules = BTreeMap::from([(libc::SYS_clone3, Vec::new())]);
        let arch = TargetArch::try_from(std::env::consts::ARCH).map_err(|e| e.to_string())?;
        let filter = SeccompFilter::new(rules, SeccompAction::Allow, SeccompAction::Errno(libc::ENOSYS as u32), arch)
            .map_err(|e| e.to_string())?;
        BpfProgram::try_from(filter).map_err(|e| e.to_string())
    }

    pub(super) fn install() -> Result<(), String> {
        // On every thread (the sandbox's epoch thread is up already).
        for program in [no_clone3()?, program()?] {
            seccompiler::apply_filter_all_threads(&program).map_err(|e| format!("seccomp filter: {e}"))?;
        }
        Ok(())
    }
}

#[cfg(not(target_os = "linux"))]
mod filter {
    pub(super) fn install() -> Result<(), String> {
        Err("no seccomp on this system".into())
    }
}

/// Tries what the walls forbid, after they are up: one line per attempt, and whether every one
/// was refused.
pub(crate) fn check(cache_dir: &std::path::Path) -> (Vec<String>, bool) {
    let mut lines = Vec::new();
    let mut all = true;
    let mut tried = |what: &str, refused: bool, should: bool| {
        let said = if refused { "refused" } else { "allowed" };
        lines.push(format!("{what}: {said}{}", if refused == should { "" } else { " (WRONG)" }));
        all &= refused == should;
    };
    #[cfg(target_os = "linux")]
    {
        let eperm = || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM);
        // SAFETY: each call takes plain integers or a NUL-terminated string on this stack; a
        // call the filter lets through (the failure this reports) is undone at once.
        unsafe {
            let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0);
            tried("socket", fd < 0 && eperm(), true);
            if fd >= 0 {
                libc::close(fd);
            }
            let path = cache_dir.join("walls-check");
            let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap_or_default();
            let fd = libc::open(c.as_ptr(), libc::O_WRONLY | libc::O_CREAT, 0o600);
            tried("open a file for writing", fd < 0 && eperm(), true);
            if fd >= 0 {
                libc::close(fd);
                libc::unlink(c.as_ptr());
            }
            let pid = libc::fork();
            if pid == 0 {
                libc::_exit(0);
            }
            tried("fork", pid < 0 && eperm(), true);
            if pid > 0 {
                libc::waitpid(pid, std::ptr::null_mut(), 0);
            }
            let sh = c"/bin/sh";
            let argv = [sh.as_ptr(), std::ptr::null()];
            let envp = [std::ptr::null()];
            let r = libc::execve(sh.as_ptr(), argv.as_ptr(), envp.as_ptr());
            tried("execve", r < 0 && eperm(), true);
            let r = libc::kill(libc::getppid(), 0);
            tried("signal the parent", r < 0 && eperm(), true);
            let r = libc::kill(libc::getpid(), 0);
            tried("signal itself", r != 0, false);
        }
    }
    #[cfg(not(target_os = "linux"))]
    tried("seccomp", false, true);
    (lines, all)
}
