//! The shard's own executor: runs the shard's tasks (the delivery loop, the control answers, the
//! keepalive sweep, replies that resolve later, shutdown) and its timers on the shard thread,
//! between turns of the shard's socket I/O, so that the backend's own wait is the shard's only
//! one: `io_uring_enter` on the ring (io_uring) or `epoll_wait` on the set (epoll), with a timeout
//! that ends at the next timer.
//!
//! Why not a general runtime: monoio (and tokio) park in their own driver (an epoll, or a ring of
//! their own), so the shard's ring had to be waited on through that driver and an eventfd the
//! kernel signalled on every completion: two wait layers, and with deferred task work a receive's
//! completion was not even run until something else woke the shard (~14 ms per command).
//!
//! - **Tasks** live in a slab on the shard thread (`!Send` futures: they hold `Rc`s). Each has one
//!   `Arc` waker, which may be woken from any thread (the ingest thread pushing an event, the
//!   control plane asking a question, a broker confirm): it puts the task on the run queue and, if
//!   the shard is parked in its wait, writes the wake eventfd, whose read the backend always has
//!   armed (a completion on the ring, a readiness report in the epoll set). A wake-up from the
//!   shard itself never makes a system call.
//! - **Timers** are a binary heap of deadlines; [`sleep`] registers once and keeps its waker
//!   current. A dropped sleep leaves a cancelled entry behind, popped at its deadline (so the heap
//!   holds at most the timers created within the longest timeout in use).
//! - **A turn**: poll every task woken before the turn began (a task that wakes itself runs again
//!   next turn, after the I/O), fire the due timers, then the backend's turn, which may wait only
//!   when no task is runnable, for at most the time to the next timer.
//!
//! Lives and dies with its shard thread: [`Executor::new`] installs it for the thread, dropping it
//! drops every task (and the `Rc`s they hold) and uninstalls it.

use std::cell::{Cell, RefCell};
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::future::Future;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, Instant};

type Task = Pin<Box<dyn Future<Output = ()>>>;

/// A task's name on the run queue: its slab slot and the slot's generation, so that a wake-up
/// for a task that has finished (its slot since reused) is recognised and ignored.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
struct TaskId {
    slot: u32,
    generation: u32,
}

/// What other threads may touch: the run queue, whether the shard is parked, the wake eventfd.
struct Shared {
    run_queue: Mutex<Vec<TaskId>>,
    /// Set while the shard waits in its backend (or is about to): a wake-up must then write the
    /// eventfd. SeqCst with the run queue's lock: a push either sees it set, or is seen by the
    /// shard's last look at the queue before it waits.
    parked: AtomicBool,
    wake_fd: OwnedFd,
}

impl Shared {
    fn push(&self, id: TaskId) {
        match self.run_queue.lock() {
            Ok(mut queue) => queue.push(id),
            Err(poisoned) => poisoned.into_inner().push(id),
        }
        if self.parked.load(Ordering::SeqCst) {
            signal(self.wake_fd.as_raw_fd());
        }
    }

    fn take(&self, out: &mut Vec<TaskId>) {
        match self.run_queue.lock() {
            Ok(mut queue) => std::mem::swap(&mut *queue, out),
            Err(poisoned) => std::mem::swap(&mut *poisoned.into_inner(), out),
        }
    }

    fn is_empty(&self) -> bool {
        match self.run_queue.lock() {
            Ok(queue) => queue.is_empty(),
            Err(poisoned) => poisoned.into_inner().is_empty(),
        }
    }
}

/// Writes 1 to an eventfd (a full counter, or any error, still leaves it readable).
fn signal(fd: RawFd) {
    let one = 1u64;
    // SAFETY: writes the 8 bytes of `one`; the eventfd is non-blocking.
    unsafe {
        libc::write(fd, (&one as *const u64).cast(), std::mem::size_of::<u64>());
    }
}

/// One task's waker: queued at most once between two polls of the task.
struct TaskWaker {
    id: TaskId,
    queued: AtomicBool,
    shared: Arc<Shared>,
}

impl Wake for TaskWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        if !self.queued.swap(true, Ordering::SeqCst) {
            self.shared.push(self.id);
        }
    }
}

struct Slot {
    generation: u32,
    task: Option<(Task, Arc<TaskWaker>)>,
}

/// A timer's shared state between its [`Sleep`] and its heap entry.
#[derive(Default)]
struct TimerState {
    fired: Cell<bool>,
    /// `None` once the sleep is gone (the entry is then dropped at its deadline).
    waker: RefCell<Option<Waker>>,
}

struct TimerEntry {
    at: Instant,
    seq: u64,
    state: Rc<TimerState>,
}

impl PartialEq for TimerEntry {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}
impl Eq for TimerEntry {}
impl PartialOrd for TimerEntry {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for TimerEntry {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.at, self.seq).cmp(&(other.at, other.seq))
    }
}

/// The thread's executor state (one shard per thread).
struct Local {
    slots: RefCell<Vec<Slot>>,
    free: RefCell<Vec<u32>>,
    /// Tasks spawned while a turn polls (started at the next turn).
    shared: Arc<Shared>,
    timers: RefCell<BinaryHeap<Reverse<TimerEntry>>>,
    next_seq: Cell<u64>,
}

thread_local! {
    static CURRENT: RefCell<Option<Rc<Local>>> = const { RefCell::new(None) };
}

fn current() -> Rc<Local> {
    CURRENT.with(|c| {
        c.borrow()
            .clone()
            .expect("a shard task or timer used outside a shard thread")
    })
}

/// The shard thread's executor (see the module's comment).
pub(crate) struct Executor {
    local: Rc<Local>,
    /// Reused between turns: the tasks woken before this turn.
    woken: Vec<TaskId>,
}

impl Executor {
    /// Creates the executor and installs it for this thread.
    pub fn new() -> io::Result<Executor> {
        // SAFETY: eventfd takes no pointers; a non-negative result is a new descriptor.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        let shared = Arc::new(Shared {
            run_queue: Mutex::new(Vec::new()),
            parked: AtomicBool::new(false),
            // SAFETY: `fd` is open and owned by no one else.
            wake_fd: unsafe { OwnedFd::from_raw_fd(fd) },
        });
        let local = Rc::new(Local {
            slots: RefCell::default(),
            free: RefCell::default(),
            shared,
            timers: RefCell::default(),
            next_seq: Cell::new(0),
        });
        CURRENT.with(|c| *c.borrow_mut() = Some(local.clone()));
        Ok(Executor {
            local,
            woken: Vec::new(),
        })
    }

    /// The descriptor the backend keeps a read armed on: readable when a task was woken from
    /// another thread while the shard was parked.
    pub fn wake_fd(&self) -> RawFd {
        self.local.shared.wake_fd.as_raw_fd()
    }

    /// Polls every task woken before this call, once; returns how many were polled.
    pub fn run_woken(&mut self) -> usize {
        self.woken.clear();
        self.local.shared.take(&mut self.woken);
        let mut polled = 0;
        for id in self.woken.drain(..) {
            let Some((mut task, waker)) = self.local.take_task(id) else {
                continue;
            };
            waker.queued.store(false, Ordering::SeqCst);
            let as_waker = Waker::from(waker.clone());
            let mut cx = Context::from_waker(&as_waker);
            polled += 1;
            if task.as_mut().poll(&mut cx).is_pending() {
                self.local.put_back(id, task, waker);
            } else {
                self.local.finish(id);
            }
        }
        polled
    }

    /// Wakes the sleeps whose deadline has passed; returns when the next one is due.
    pub fn fire_timers(&self, now: Instant) -> Option<Instant> {
        let mut timers = self.local.timers.borrow_mut();
        while let Some(Reverse(entry)) = timers.peek() {
            let cancelled = entry.state.waker.borrow().is_none();
            if entry.at > now && !cancelled {
                return Some(entry.at);
            }
            let Some(Reverse(entry)) = timers.pop() else {
                break;
            };
            entry.state.fired.set(true);
            let waker = entry.state.waker.borrow_mut().take();
            if let Some(waker) = waker {
                waker.wake();
            }
        }
        None
    }

    /// Announces that the shard is about to wait in its backend; false (and not parked) when a
    /// task was woken meanwhile, so the wait must not block. Pair with [`Executor::unpark`].
    pub fn park(&self) -> bool {
        self.local.shared.parked.store(true, Ordering::SeqCst);
        if self.local.shared.is_empty() {
            return true;
        }
        self.unpark();
        false
    }

    /// The wait is over.
    pub fn unpark(&self) {
        self.local.shared.parked.store(false, Ordering::SeqCst);
    }

    /// Whether a task is waiting to be polled.
    pub fn has_woken(&self) -> bool {
        !self.local.shared.is_empty()
    }

    /// Clears the wake eventfd (the epoll backend reads it on readiness; io_uring's armed read
    /// consumes it itself).
    pub fn clear_wake(&self) {
        let mut value = 0u64;
        // SAFETY: reads 8 bytes into `value`; the eventfd is non-blocking.
        unsafe {
            libc::read(
                self.wake_fd(),
                (&mut value as *mut u64).cast(),
                std::mem::size_of::<u64>(),
            );
        }
    }
}

impl Drop for Executor {
    fn drop(&mut self) {
        // The tasks hold the shard's `Rc`s: drop them here, on the shard thread.
        let tasks: Vec<Slot> = std::mem::take(&mut *self.local.slots.borrow_mut());
        drop(tasks);
        self.local.timers.borrow_mut().clear();
        CURRENT.with(|c| *c.borrow_mut() = None);
    }
}

impl Local {
    fn take_task(&self, id: TaskId) -> Option<(Task, Arc<TaskWaker>)> {
        let mut slots = self.slots.borrow_mut();
        let slot = slots.get_mut(id.slot as usize)?;
        if slot.generation != id.generation {
            return None;
        }
        slot.task.take()
    }

    fn put_back(&self, id: TaskId, task: Task, waker: Arc<TaskWaker>) {
        let mut slots = self.slots.borrow_mut();
        debug_assert!(
            slots[id.slot as usize].generation == id.generation
                && slots[id.slot as usize].task.is_none(),
            "a task's slot changed while the task was being polled"
        );
        slots[id.slot as usize].task = Some((task, waker));
    }

    fn finish(&self, id: TaskId) {
        let mut slots = self.slots.borrow_mut();
        let slot = &mut slots[id.slot as usize];
        slot.generation = slot.generation.wrapping_add(1);
        slot.task = None;
        self.free.borrow_mut().push(id.slot);
    }

    fn spawn(&self, task: Task) {
        let slot = self.free.borrow_mut().pop();
        let mut slots = self.slots.borrow_mut();
        let slot = slot.unwrap_or_else(|| {
            slots.push(Slot {
                generation: 0,
                task: None,
            });
            (slots.len() - 1) as u32
        });
        let id = TaskId {
            slot,
            generation: slots[slot as usize].generation,
        };
        let waker = Arc::new(TaskWaker {
            id,
            queued: AtomicBool::new(false),
            shared: self.shared.clone(),
        });
        slots[slot as usize].task = Some((task, waker.clone()));
        drop(slots);
        waker.wake_by_ref();
    }
}

/// Runs `task` on this shard's executor, first polled at the next turn.
pub(crate) fn spawn(task: impl Future<Output = ()> + 'static) {
    current().spawn(Box::pin(task));
}

/// A future that is ready `duration` from now (on the shard's executor).
pub(crate) fn sleep(duration: Duration) -> Sleep {
    Sleep {
        at: Instant::now() + duration,
        state: None,
    }
}

/// See [`sleep`].
pub(crate) struct Sleep {
    at: Instant,
    state: Option<Rc<TimerState>>,
}

impl Future for Sleep {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if Instant::now() >= self.at || self.state.as_ref().is_some_and(|s| s.fired.get()) {
            return Poll::Ready(());
        }
        match &self.state {
            Some(state) => *state.waker.borrow_mut() = Some(cx.waker().clone()),
            None => {
                let local = current();
                let state = Rc::new(TimerState::default());
                *state.waker.borrow_mut() = Some(cx.waker().clone());
                let seq = local.next_seq.get();
                local.next_seq.set(seq + 1);
                local.timers.borrow_mut().push(Reverse(TimerEntry {
                    at: self.at,
                    seq,
                    state: state.clone(),
                }));
                self.state = Some(state);
            }
        }
        Poll::Pending
    }
}

impl Drop for Sleep {
    fn drop(&mut self) {
        if let Some(state) = &self.state {
            state.waker.borrow_mut().take();
        }
    }
}

/// `future`'s output, or `Err(Elapsed)` if it is not ready within `duration`.
pub(crate) async fn timeout<F: Future>(
    duration: Duration,
    future: F,
) -> Result<F::Output, Elapsed> {
    let mut future = std::pin::pin!(future);
    let mut deadline = std::pin::pin!(sleep(duration));
    std::future::poll_fn(|cx| {
        if let Poll::Ready(output) = future.as_mut().poll(cx) {
            return Poll::Ready(Ok(output));
        }
        deadline.as_mut().poll(cx).map(|()| Err(Elapsed))
    })
    .await
}

/// A [`timeout`] ran out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Elapsed;

/// Lets the shard's other tasks, and a turn of its socket I/O, run before going on.
pub(crate) async fn yield_now() {
    let mut yielded = false;
    std::future::poll_fn(|cx| {
        if yielded {
            Poll::Ready(())
        } else {
            yielded = true;
            cx.waker().wake_by_ref();
            Poll::Pending
        }
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs the executor until `done` is set, waiting on nothing but the timers (a plain sleep
    /// stands in for the backend's wait, woken early by the eventfd's counter).
    fn run_until(executor: &mut Executor, done: &Cell<bool>) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !done.get() {
            assert!(Instant::now() < deadline, "the tasks did not finish");
            executor.run_woken();
            let next = executor.fire_timers(Instant::now());
            if executor.park() {
                let wait = next
                    .map(|at| at.saturating_duration_since(Instant::now()))
                    .unwrap_or(Duration::from_millis(1))
                    .min(Duration::from_millis(1));
                std::thread::sleep(wait);
                executor.unpark();
                executor.clear_wake();
            }
        }
    }

    #[test]
    fn tasks_run_timers_fire_in_order_and_timeouts_elapse() {
        let mut executor = Executor::new().unwrap();
        let order = Rc::new(RefCell::new(Vec::new()));
        let done = Rc::new(Cell::new(false));
        for (name, ms) in [("late", 30u64), ("early", 10), ("middle", 20)] {
            let order = order.clone();
            spawn(async move {
                sleep(Duration::from_millis(ms)).await;
                order.borrow_mut().push(name);
            });
        }
        let finished = done.clone();
        let seen = order.clone();
        spawn(async move {
            let never = std::future::pending::<()>();
            assert_eq!(timeout(Duration::from_millis(5), never).await, Err(Elapsed));
            assert_eq!(timeout(Duration::from_secs(5), async { 7 }).await, Ok(7));
            sleep(Duration::from_millis(40)).await;
            assert_eq!(*seen.borrow(), ["early", "middle", "late"]);
            finished.set(true);
        });
        run_until(&mut executor, &done);
        // Every task finished, and its slot is free again.
        assert_eq!(executor.local.slots.borrow().len(), 4);
        assert_eq!(executor.local.free.borrow().len(), 4);
    }

    #[test]
    fn a_wake_from_another_thread_signals_a_parked_shard() {
        let mut executor = Executor::new().unwrap();
        let flag = Arc::new(atomic_waker::AtomicWaker::new());
        let ready = Arc::new(AtomicBool::new(false));
        let done = Rc::new(Cell::new(false));
        let (f, r, d) = (flag.clone(), ready.clone(), done.clone());
        spawn(async move {
            std::future::poll_fn(|cx| {
                f.register(cx.waker());
                if r.load(Ordering::SeqCst) {
                    Poll::Ready(())
                } else {
                    Poll::Pending
                }
            })
            .await;
            d.set(true);
        });
        executor.run_woken();
        assert!(executor.park(), "nothing was woken yet");
        let waker = std::thread::spawn(move || {
            ready.store(true, Ordering::SeqCst);
            flag.wake();
        });
        waker.join().unwrap();
        // The eventfd is readable: the backend's wait would have ended.
        let mut value = 0u64;
        // SAFETY: reads 8 bytes into `value`.
        let n = unsafe { libc::read(executor.wake_fd(), (&mut value as *mut u64).cast(), 8) };
        assert_eq!((n, value), (8, 1));
        executor.unpark();
        executor.run_woken();
        assert!(done.get());
    }
}
