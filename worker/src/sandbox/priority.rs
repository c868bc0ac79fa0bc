//! Task threads at the lowest scheduling priority, so a volunteer's own programs always come
//! first: `SCHED_IDLE` (Linux runs such a thread only on CPU time nobody else wants), or nice 19
//! where that is refused. Both apply to the calling thread only.

/// The scheduling a thread runs under.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Priority {
    /// `SCHED_IDLE`.
    Idle,
    /// The normal policy at this nice value.
    Nice(i32),
    /// Some other policy (its number).
    Other(i32),
}

/// Lowers the calling thread to `SCHED_IDLE`, or to nice 19 if that is refused; logs if both are.
pub(crate) fn lower_this_thread() {
    #[cfg(target_os = "linux")]
    {
        let param = libc::sched_param { sched_priority: 0 };
        // SAFETY: pid 0 is the calling thread; `param` outlives the call.
        if unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) } == 0 {
            return;
        }
        // SAFETY: gettid has no preconditions; setpriority on one thread id changes that thread.
        let tid = unsafe { libc::gettid() };
        if unsafe { libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, 19) } == 0 {
            return;
        }
        tracing::warn!("task threads run at normal priority: {}", std::io::Error::last_os_error());
    }
}

/// The calling thread's scheduling.
pub fn current_priority() -> Priority {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: plain queries of the calling thread.
        let policy = unsafe { libc::sched_getscheduler(0) };
        if policy == libc::SCHED_IDLE {
            return Priority::Idle;
        }
        if policy == libc::SCHED_OTHER {
            let tid = unsafe { libc::gettid() };
            return Priority::Nice(unsafe { libc::getpriority(libc::PRIO_PROCESS, tid as libc::id_t) });
        }
        Priority::Other(policy)
    }
    #[cfg(not(target_os = "linux"))]
    Priority::Nice(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lowered_thread_runs_at_idle_priority() {
        let before = current_priority();
        let lowered = std::thread::spawn(|| {
            lower_this_thread();
            current_priority()
        })
        .join()
        .expect("thread");
        assert!(matches!(lowered, Priority::Idle | Priority::Nice(19)), "{lowered:?}");
        assert_eq!(current_priority(), before, "only the calling thread changes");
    }
}
