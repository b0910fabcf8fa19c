//! [`HeadWait`]: store work a response head waits for, at most the store
//! timeout, and that goes on in the background if it takes longer.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;
use tokio::time::Sleep;

use super::health::Health;

/// Store work on the request path. The response waits for it until the
/// store timeout (not at all without one); after that (or if the response
/// is dropped) the work goes on in a task of its own and hands its value to
/// `late`, so the local state still learns what the store did.
pub(crate) struct HeadWait<T: Send + 'static> {
    work: Option<Pin<Box<dyn Future<Output = T> + Send>>>,
    timer: Option<Pin<Box<Sleep>>>,
    timeout: Option<Duration>,
    late: Option<Box<dyn FnOnce(T) + Send>>,
    health: Arc<Health>,
    /// Whether reaching the timeout tells of a slow store (not when nobody
    /// waits on the answer any more, see [`Self::unwatched`]).
    counts_timeout: bool,
}

impl<T: Send + 'static> fmt::Debug for HeadWait<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HeadWait")
            .field("timeout", &self.timeout)
            .field("done", &self.work.is_none())
            .finish_non_exhaustive()
    }
}

impl<T: Send + 'static> HeadWait<T> {
    pub(crate) fn new(
        work: impl Future<Output = T> + Send + 'static,
        timeout: Option<Duration>,
        health: Arc<Health>,
        late: impl FnOnce(T) + Send + 'static,
    ) -> Self {
        Self {
            work: Some(Box::pin(work)),
            timer: None,
            timeout,
            late: Some(Box::new(late)),
            health,
            counts_timeout: true,
        }
    }

    /// The same wait, for a request nobody waits on any more (its client
    /// went away): reaching the timeout is then not counted as a request
    /// timeout, and so does not make requests skip the store; the store
    /// was not slow for anyone.
    pub(crate) fn unwatched(&mut self) {
        self.counts_timeout = false;
    }

    /// The work's value when it finished in time; `None` at the timeout
    /// (counted; requests then do not wait for the store for a while).
    pub(crate) fn poll_wait(&mut self, cx: &mut Context<'_>) -> Poll<Option<T>> {
        let Some(work) = self.work.as_mut() else {
            return Poll::Ready(None);
        };
        if let Poll::Ready(value) = work.as_mut().poll(cx) {
            self.work = None;
            return Poll::Ready(Some(value));
        }
        let Some(timeout) = self.timeout else {
            self.detach();
            return Poll::Ready(None);
        };
        let timer = self
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        ready!(timer.as_mut().poll(cx));
        if self.counts_timeout {
            self.health.request_timed_out();
        }
        self.detach();
        Poll::Ready(None)
    }

    /// Lets unfinished work go on in the background.
    fn detach(&mut self) {
        let (Some(work), Ok(runtime)) = (self.work.take(), tokio::runtime::Handle::try_current())
        else {
            return;
        };
        let late = self.late.take();
        runtime.spawn(async move {
            let value = work.await;
            if let Some(late) = late {
                late(value);
            }
        });
    }
}

impl<T: Send + 'static> Drop for HeadWait<T> {
    fn drop(&mut self) {
        self.detach();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    fn poll_once<T: Send + 'static>(wait: &mut HeadWait<T>) -> Poll<Option<T>> {
        let waker = std::task::Waker::noop();
        wait.poll_wait(&mut Context::from_waker(waker))
    }

    #[tokio::test(start_paused = true)]
    async fn work_done_in_time_is_returned() {
        let health = Arc::new(Health::default());
        let mut wait = HeadWait::new(async { 7 }, Some(Duration::from_millis(50)), health, |_| {});
        assert_eq!(poll_once(&mut wait), Poll::Ready(Some(7)));
    }

    /// A wait on work that finishes when the test sends its value; what
    /// reaches the late handler lands in the returned cell.
    fn wait_on_sender(
        timeout: Option<Duration>,
        health: &Arc<Health>,
    ) -> (
        HeadWait<u32>,
        tokio::sync::oneshot::Sender<u32>,
        Arc<Mutex<Option<u32>>>,
    ) {
        let (tx, rx) = tokio::sync::oneshot::channel::<u32>();
        let late = Arc::new(Mutex::new(None));
        let seen = Arc::clone(&late);
        let wait = HeadWait::new(
            async move { rx.await.unwrap() },
            timeout,
            Arc::clone(health),
            move |v| *seen.lock().unwrap() = Some(v),
        );
        (wait, tx, late)
    }

    async fn settle_background() {
        tokio::task::yield_now().await;
        tokio::task::yield_now().await;
    }

    #[tokio::test(start_paused = true)]
    async fn without_a_timeout_nothing_waits() {
        let health = Arc::new(Health::default());
        let (mut wait, tx, late) = wait_on_sender(None, &health);
        assert_eq!(poll_once(&mut wait), Poll::Ready(None));
        assert_eq!(health.snapshot().request_timeouts, 0);
        tx.send(3).unwrap();
        settle_background().await;
        assert_eq!(*late.lock().unwrap(), Some(3));
    }

    #[tokio::test(start_paused = true)]
    async fn slow_work_goes_on_after_the_timeout() {
        let health = Arc::new(Health::default());
        let (mut wait, tx, late) = wait_on_sender(Some(Duration::from_millis(50)), &health);
        let value = std::future::poll_fn(|cx| wait.poll_wait(cx)).await;
        assert_eq!(value, None, "gave up at the timeout");
        assert_eq!(health.snapshot().request_timeouts, 1);
        tx.send(9).unwrap();
        settle_background().await;
        assert_eq!(*late.lock().unwrap(), Some(9), "the value still arrives");
    }

    #[tokio::test(start_paused = true)]
    async fn an_unwatched_wait_reaching_its_timeout_is_not_counted() {
        let health = Arc::new(Health::default());
        let (mut wait, tx, late) = wait_on_sender(Some(Duration::from_millis(50)), &health);
        wait.unwatched();
        let value = std::future::poll_fn(|cx| wait.poll_wait(cx)).await;
        assert_eq!(value, None, "gave up at the timeout");
        let counters = health.snapshot();
        assert_eq!(counters.request_timeouts, 0);
        assert!(
            health.request_path_open(),
            "requests still wait on the store"
        );
        tx.send(4).unwrap();
        settle_background().await;
        assert_eq!(*late.lock().unwrap(), Some(4), "the value still arrives");
    }
}
