//! The server side of a session.
//!
//! [`serve`] reads the session's requests, runs each on its own task through a handler
//! (the same code the unary calls run) and sends each response, tagged with its request's
//! id, as soon as it is ready. At most `max_in_flight` requests run at once; at the limit
//! it stops reading, so HTTP/2 flow control holds back a client that sends faster than
//! the node answers, and a client that stops reading responses stops being served.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use tokio::sync::{mpsc, Semaphore};
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::{Stream, StreamExt};
use tonic::Status;

use super::{Answer, Envelope};

/// Requests of one session a node works on at once.
pub const MAX_IN_FLIGHT: usize = 256;

/// The responses of a session, as a tonic server method returns them.
pub type ResponseStream<A> = Pin<Box<dyn Stream<Item = Result<A, Status>> + Send>>;

/// Serves the requests of `inbound` (a `tonic::Streaming` of requests) with `handler`,
/// at most `max_in_flight` at once. A request without an operation gets
/// `INVALID_ARGUMENT`. The response stream ends after the last response once the client
/// has closed its side, or with the error that broke the inbound stream.
pub fn serve<S, E, A, H, F>(inbound: S, max_in_flight: usize, handler: H) -> ResponseStream<A>
where
    S: Stream<Item = Result<E, Status>> + Send + Unpin + 'static,
    E: Envelope,
    A: Answer,
    H: Fn(E::Op) -> F + Send + Sync + 'static,
    F: Future<Output = Result<A::Ok, Status>> + Send + 'static,
{
    serve_until(inbound, max_in_flight, handler, std::future::pending())
}

/// [`serve`], but once `until` completes (the server is stopping) no further request is
/// read: the response stream ends after the answers to those already running, even
/// though the client keeps its side open. A long-lived session would otherwise hold a
/// graceful shutdown for its whole grace period.
pub fn serve_until<S, E, A, H, F, U>(
    inbound: S,
    max_in_flight: usize,
    handler: H,
    until: U,
) -> ResponseStream<A>
where
    S: Stream<Item = Result<E, Status>> + Send + Unpin + 'static,
    E: Envelope,
    A: Answer,
    H: Fn(E::Op) -> F + Send + Sync + 'static,
    F: Future<Output = Result<A::Ok, Status>> + Send + 'static,
    U: Future<Output = ()> + Send + 'static,
{
    let max_in_flight = max_in_flight.max(1);
    let (tx, rx) = mpsc::channel(max_in_flight);
    tokio::spawn(read_requests(inbound, max_in_flight, handler, tx, until));
    Box::pin(ReceiverStream::new(rx))
}

/// [`serve_until`] with at most [`MAX_IN_FLIGHT`] requests at once, each handled by
/// `handle` on its own clone of `svc` (a service's method: `serve_on(inbound,
/// self.clone(), Self::one, stopping)`).
pub fn serve_on<S, E, A, T, H, F, U>(inbound: S, svc: T, handle: H, until: U) -> ResponseStream<A>
where
    S: Stream<Item = Result<E, Status>> + Send + Unpin + 'static,
    E: Envelope,
    A: Answer,
    T: Clone + Send + Sync + 'static,
    H: Fn(T, E::Op) -> F + Send + Sync + 'static,
    F: Future<Output = Result<A::Ok, Status>> + Send + 'static,
    U: Future<Output = ()> + Send + 'static,
{
    serve_until(
        inbound,
        MAX_IN_FLIGHT,
        move |op| handle(svc.clone(), op),
        until,
    )
}

async fn read_requests<S, E, A, H, F, U>(
    mut inbound: S,
    max_in_flight: usize,
    handler: H,
    tx: mpsc::Sender<Result<A, Status>>,
    until: U,
) where
    S: Stream<Item = Result<E, Status>> + Send + Unpin + 'static,
    E: Envelope,
    A: Answer,
    H: Fn(E::Op) -> F + Send + Sync + 'static,
    F: Future<Output = Result<A::Ok, Status>> + Send + 'static,
    U: Future<Output = ()> + Send + 'static,
{
    let slots = Arc::new(Semaphore::new(max_in_flight));
    tokio::pin!(until);
    loop {
        let slot = tokio::select! {
            biased;
            () = &mut until => return,
            slot = slots.clone().acquire_owned() => match slot {
                Ok(slot) => slot,
                Err(_) => return,
            },
        };
        let next = tokio::select! {
            biased;
            () = &mut until => return,
            next = inbound.next() => next,
        };
        let (id, op) = match next {
            Some(Ok(req)) => req.into_parts(),
            None => return,
            Some(Err(status)) => {
                let _ = tx.send(Err(status)).await;
                return;
            }
        };
        let work = op.map(&handler);
        let tx = tx.clone();
        tokio::spawn(async move {
            let result = match work {
                Some(work) => work.await,
                None => Err(Status::invalid_argument(format!(
                    "session request {id} has no operation"
                ))),
            };
            // The client may have gone; the request is done either way.
            let _ = tx.send(Ok(A::new(id, result))).await;
            drop(slot);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::v1::{
        session_request, session_response, GetRequest, GetResponse, PutRequest, PutResponse,
        SessionRequest, SessionResponse,
    };
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    fn get(id: u64, key: &str) -> Result<SessionRequest, Status> {
        Ok(SessionRequest {
            id,
            op: Some(session_request::Op::Get(GetRequest {
                key: key.into(),
                r: None,
            })),
        })
    }

    /// Answers a get with the key's length in `replies` after sleeping that many ms; a
    /// put of key "bad" fails.
    async fn handle(op: session_request::Op) -> Result<session_response::Result, Status> {
        match op {
            session_request::Op::Get(g) => {
                tokio::time::sleep(Duration::from_millis(g.key.len() as u64)).await;
                Ok(session_response::Result::Get(GetResponse {
                    replies: g.key.len() as u32,
                    ..GetResponse::default()
                }))
            }
            session_request::Op::Put(p) if p.key == b"bad" => {
                Err(Status::invalid_argument("bad key"))
            }
            session_request::Op::Put(_) => {
                Ok(session_response::Result::Put(PutResponse::default()))
            }
            session_request::Op::Delete(_) => Err(Status::unimplemented("no deletes")),
        }
    }

    async fn collect(s: ResponseStream<SessionResponse>) -> Vec<Result<SessionResponse, Status>> {
        tokio::time::timeout(Duration::from_secs(10), s.collect::<Vec<_>>())
            .await
            .expect("the response stream ends")
    }

    #[tokio::test]
    async fn responses_carry_their_ids_in_the_order_requests_finish() {
        // The slow request (10 ms) was sent first but finishes last.
        let inbound = tokio_stream::iter(vec![get(7, "0123456789"), get(8, "a"), get(9, "ab")]);
        let out = collect(serve(inbound, 16, handle)).await;
        let got: Vec<(u64, u32)> = out
            .into_iter()
            .map(|r| {
                let r = r.unwrap();
                match r.result {
                    Some(session_response::Result::Get(g)) => (r.id, g.replies),
                    other => panic!("unexpected {other:?}"),
                }
            })
            .collect();
        assert_eq!(got.len(), 3);
        assert_eq!(got.last(), Some(&(7, 10)), "{got:?}");
        assert!(got.contains(&(8, 1)) && got.contains(&(9, 2)), "{got:?}");
    }

    #[tokio::test]
    async fn a_failed_request_is_its_own_response_and_the_session_goes_on() {
        let put = |id, key: &str| {
            Ok(SessionRequest {
                id,
                op: Some(session_request::Op::Put(PutRequest {
                    key: key.into(),
                    ..PutRequest::default()
                })),
            })
        };
        let empty = Ok(SessionRequest { id: 3, op: None });
        let inbound = tokio_stream::iter(vec![put(1, "bad"), empty, put(2, "fine")]);
        let mut out: Vec<SessionResponse> = collect(serve(inbound, 1, handle))
            .await
            .into_iter()
            .map(Result::unwrap)
            .collect();
        out.sort_by_key(|r| r.id);
        match &out[0].result {
            Some(session_response::Result::Error(e)) => {
                assert_eq!(e.code, tonic::Code::InvalidArgument as i32);
                assert_eq!(e.message, "bad key");
            }
            other => panic!("unexpected {other:?}"),
        }
        assert!(matches!(
            out[1].result,
            Some(session_response::Result::Put(_))
        ));
        match &out[2].result {
            Some(session_response::Result::Error(e)) => {
                assert_eq!(e.code, tonic::Code::InvalidArgument as i32);
                assert!(e.message.contains("no operation"), "{}", e.message);
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_broken_inbound_stream_ends_the_responses_with_its_error() {
        let inbound = tokio_stream::iter(vec![get(1, "a"), Err(Status::data_loss("cut"))]);
        let out = collect(serve(inbound, 4, handle)).await;
        let err = out
            .iter()
            .find_map(|r| r.as_ref().err())
            .expect("the stream's error is passed on");
        assert_eq!(err.code(), tonic::Code::DataLoss);
    }

    #[tokio::test]
    async fn once_stopping_it_answers_what_runs_and_ends_though_the_client_stays() {
        let (tx, rx) = mpsc::channel(8);
        let inbound = ReceiverStream::new(rx);
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let until = async {
            let _ = stop_rx.await;
        };
        let mut out: ResponseStream<SessionResponse> = serve_until(inbound, 4, handle, until);
        // A request that takes 50 ms is running when the server starts stopping.
        tx.send(get(1, &"x".repeat(50))).await.unwrap();
        tokio::time::sleep(Duration::from_millis(10)).await;
        stop_tx.send(()).unwrap();
        tokio::time::sleep(Duration::from_millis(10)).await;
        // Sent after the stop: never read (the session has let go of its inbound side).
        // The client keeps `tx` open throughout.
        let _ = tx.send(get(2, "a")).await;
        let answered: Vec<u64> = tokio::time::timeout(Duration::from_secs(5), async {
            let mut ids = Vec::new();
            while let Some(r) = out.next().await {
                ids.push(r.unwrap().id);
            }
            ids
        })
        .await
        .expect("the response stream ends without the client closing its side");
        assert_eq!(answered, [1]);
        drop(tx);
    }

    #[tokio::test]
    async fn no_more_than_max_in_flight_requests_run_at_once() {
        let running = Arc::new(AtomicUsize::new(0));
        let most = Arc::new(AtomicUsize::new(0));
        let (r, m) = (running.clone(), most.clone());
        let handler = move |_op| {
            let (r, m) = (r.clone(), m.clone());
            async move {
                let now = r.fetch_add(1, Ordering::SeqCst) + 1;
                m.fetch_max(now, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(2)).await;
                r.fetch_sub(1, Ordering::SeqCst);
                Ok(session_response::Result::Get(GetResponse::default()))
            }
        };
        let inbound = tokio_stream::iter((0..40).map(|i| get(i, "k")).collect::<Vec<_>>());
        let out = collect(serve(inbound, 3, handler)).await;
        assert_eq!(out.len(), 40);
        let most = most.load(Ordering::SeqCst);
        assert!((1..=3).contains(&most), "{most} ran at once");
    }
}
