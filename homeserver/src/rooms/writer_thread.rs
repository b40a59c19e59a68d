//! The timeline writer's own thread.
//!
//! A batch of appends is a chain of steps (read the transactions, build and sign, evaluate push
//! rules, the statements, the commit), each awaiting the one before. On the shared runtime every
//! await put the writer back in a worker's queue behind the `/sync` computations of the moment:
//! with 100 receivers long-polling, a batch took three times its CPU time in wall time, and the
//! writer is what every send waits for. Here it is the only task of a thread of its own, which
//! the operating system schedules beside the runtime's workers.
//!
//! The writer still runs in the caller's runtime context (each poll enters it): what it spawns,
//! its timers and its sockets belong to that runtime, as before; this thread only polls it.

use std::{
    future::Future,
    pin::Pin,
    sync::OnceLock,
    task::{Context, Poll},
};

use tokio::runtime::{Builder, Handle};

/// Runs `work` on the writer thread, in `runtime`'s context; on `runtime` itself when the
/// thread could not be started.
pub(crate) fn spawn(runtime: &Handle, work: impl Future<Output = ()> + Send + 'static) {
    let work = InRuntime {
        runtime: runtime.clone(),
        work: Box::pin(work),
    };
    match thread() {
        Some(writer) => drop(writer.spawn(work)),
        None => drop(runtime.spawn(work)),
    }
}

/// The writer thread's runtime: one per process, started on first use, never stopped.
fn thread() -> Option<&'static Handle> {
    static WRITER: OnceLock<Option<Handle>> = OnceLock::new();
    WRITER
        .get_or_init(|| {
            let runtime = match Builder::new_current_thread().enable_all().build() {
                Ok(runtime) => runtime,
                Err(error) => {
                    tracing::warn!(%error, "no writer thread: appends run on the shared runtime");
                    return None;
                }
            };
            let handle = runtime.handle().clone();
            let started = std::thread::Builder::new()
                .name("hearth-writer".into())
                .spawn(move || runtime.block_on(std::future::pending::<()>()));
            match started {
                Ok(_) => Some(handle),
                Err(error) => {
                    tracing::warn!(%error, "no writer thread: appends run on the shared runtime");
                    None
                }
            }
        })
        .as_ref()
}

/// A future polled inside another runtime's context.
struct InRuntime {
    runtime: Handle,
    work: Pin<Box<dyn Future<Output = ()> + Send>>,
}

impl Future for InRuntime {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let _context = self.runtime.enter();
        self.work.as_mut().poll(cx)
    }
}
