//! Streaming bodies across the tunnel, used identically by both ends.
//!
//! The relay is the HTTP/3 client and the agent the HTTP/3 server, so each end holds a
//! different h3 stream type; [`H3Recv`] and [`H3Send`] give them one face. [`TunnelBody`]
//! turns the receiving half into an [`http_body::Body`] (for hyper), and [`pump`] copies a
//! hyper body into the sending half. Neither ever holds more than one frame: bodies are
//! streamed, never buffered whole.

use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::{Buf, Bytes};
use h3::error::{Code, StreamError};
use h3_quinn::{RecvStream, SendStream};
use http::HeaderMap;
use http_body::{Body, Frame};

/// The receiving half of an HTTP/3 request stream.
pub trait H3Recv: Send + Unpin + 'static {
    fn poll_data(&mut self, cx: &mut Context<'_>) -> Poll<Result<Option<Bytes>, StreamError>>;
    fn poll_trailers(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Option<HeaderMap>, StreamError>>;
}

/// The sending half of an HTTP/3 request stream.
pub trait H3Send: Send + 'static {
    fn send_data(&mut self, data: Bytes) -> impl Future<Output = Result<(), StreamError>> + Send;
    fn send_trailers(
        &mut self,
        trailers: HeaderMap,
    ) -> impl Future<Output = Result<(), StreamError>> + Send;
    fn finish(&mut self) -> impl Future<Output = Result<(), StreamError>> + Send;
    fn stop_stream(&mut self, code: Code);
}

fn to_bytes(
    r: Poll<Result<Option<impl Buf>, StreamError>>,
) -> Poll<Result<Option<Bytes>, StreamError>> {
    r.map(|r| r.map(|o| o.map(|mut b| b.copy_to_bytes(b.remaining()))))
}

macro_rules! impl_h3_halves {
    ($stream:ident) => {
        impl H3Recv for h3::$stream::RequestStream<RecvStream, Bytes> {
            fn poll_data(
                &mut self,
                cx: &mut Context<'_>,
            ) -> Poll<Result<Option<Bytes>, StreamError>> {
                to_bytes(self.poll_recv_data(cx))
            }
            fn poll_trailers(
                &mut self,
                cx: &mut Context<'_>,
            ) -> Poll<Result<Option<HeaderMap>, StreamError>> {
                self.poll_recv_trailers(cx)
            }
        }

        impl H3Send for h3::$stream::RequestStream<SendStream<Bytes>, Bytes> {
            fn send_data(
                &mut self,
                data: Bytes,
            ) -> impl Future<Output = Result<(), StreamError>> + Send {
                h3::$stream::RequestStream::send_data(self, data)
            }
            fn send_trailers(
                &mut self,
                trailers: HeaderMap,
            ) -> impl Future<Output = Result<(), StreamError>> + Send {
                h3::$stream::RequestStream::send_trailers(self, trailers)
            }
            fn finish(&mut self) -> impl Future<Output = Result<(), StreamError>> + Send {
                h3::$stream::RequestStream::finish(self)
            }
            fn stop_stream(&mut self, code: Code) {
                h3::$stream::RequestStream::stop_stream(self, code)
            }
        }
    };
}

impl_h3_halves!(client);
impl_h3_halves!(server);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Data,
    Trailers,
    Done,
}

/// Told once how a [`TunnelBody`] ended, then dropped with it. The relay's observer holds
/// the stream's lease (so a stream counts as outstanding exactly as long as its response
/// is being read) and writes the request's log line and metrics.
pub trait BodyObserver: Send + Unpin + 'static {
    /// `bytes` of body passed; `complete` is false when the body failed or was dropped
    /// before its end.
    fn finished(&mut self, bytes: u64, complete: bool);
}

impl BodyObserver for () {
    fn finished(&mut self, _bytes: u64, _complete: bool) {}
}

/// An HTTP/3 receiving half as a hyper body, with an observer `G` riding along.
pub struct TunnelBody<R: H3Recv, G: BodyObserver = ()> {
    recv: R,
    phase: Phase,
    bytes: u64,
    guard: Option<G>,
    /// A frame taken by [`TunnelBody::ended_already`], handed out first.
    peeked: Option<Result<Frame<Bytes>, StreamError>>,
}

impl<R: H3Recv, G: BodyObserver> TunnelBody<R, G> {
    pub fn new(recv: R, guard: G) -> Self {
        TunnelBody {
            recv,
            phase: Phase::Data,
            bytes: 0,
            guard: Some(guard),
            peeked: None,
        }
    }

    /// True when the body is already known to have ended (its end arrived with the
    /// head, as for a GET): checks without waiting. The agent uses it to send such
    /// requests upstream with no body at all, instead of as an open-ended chunked one.
    pub fn ended_already(&mut self) -> bool {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        match Pin::new(&mut *self).poll_frame(&mut cx) {
            Poll::Ready(None) => true,
            Poll::Ready(Some(frame)) => {
                self.peeked = Some(frame);
                false
            }
            Poll::Pending => false,
        }
    }

    fn end(&mut self, complete: bool) {
        self.phase = Phase::Done;
        if let Some(mut g) = self.guard.take() {
            g.finished(self.bytes, complete);
        }
    }
}

impl<R: H3Recv, G: BodyObserver> Drop for TunnelBody<R, G> {
    fn drop(&mut self) {
        self.end(false);
    }
}

impl<R: H3Recv, G: BodyObserver> Body for TunnelBody<R, G> {
    type Data = Bytes;
    type Error = StreamError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, StreamError>>> {
        let this = self.get_mut();
        if let Some(frame) = this.peeked.take() {
            return Poll::Ready(Some(frame));
        }
        loop {
            match this.phase {
                Phase::Data => match ready!(this.recv.poll_data(cx)) {
                    Ok(Some(data)) => {
                        this.bytes += data.len() as u64;
                        return Poll::Ready(Some(Ok(Frame::data(data))));
                    }
                    Ok(None) => this.phase = Phase::Trailers,
                    Err(e) => {
                        this.end(false);
                        return Poll::Ready(Some(Err(e)));
                    }
                },
                Phase::Trailers => {
                    let r = ready!(this.recv.poll_trailers(cx));
                    this.end(r.is_ok());
                    return Poll::Ready(match r {
                        Ok(Some(t)) => Some(Ok(Frame::trailers(t))),
                        Ok(None) => None,
                        Err(e) => Some(Err(e)),
                    });
                }
                Phase::Done => return Poll::Ready(None),
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.phase == Phase::Done && self.peeked.is_none()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        if self.is_end_stream() {
            http_body::SizeHint::with_exact(0)
        } else {
            http_body::SizeHint::default()
        }
    }
}

/// How a [`pump`] ended badly.
#[derive(Debug, thiserror::Error)]
pub enum PumpError {
    /// The source body failed (caller or upstream went away mid-body).
    #[error("source body failed: {0}")]
    Source(Box<dyn std::error::Error + Send + Sync>),
    /// The stream failed (peer reset it, or the tunnel died).
    #[error("tunnel stream failed: {0}")]
    Stream(#[from] StreamError),
}

/// Copies `body` into `send` frame by frame, then finishes the stream. On a source error
/// the stream is reset (so the far end sees a cut body, never a silently short one).
/// Returns the number of data bytes sent.
pub async fn pump<B, S>(body: B, send: &mut S) -> Result<u64, PumpError>
where
    B: Body<Data = Bytes> + Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    S: H3Send,
{
    let mut body = std::pin::pin!(body);
    let mut sent = 0u64;
    while let Some(frame) = std::future::poll_fn(|cx| body.as_mut().poll_frame(cx)).await {
        let frame = match frame {
            Ok(f) => f,
            Err(e) => {
                send.stop_stream(Code::H3_REQUEST_CANCELLED);
                return Err(PumpError::Source(e.into()));
            }
        };
        match frame.into_data() {
            Ok(data) => {
                if !data.is_empty() {
                    sent += data.len() as u64;
                    send.send_data(data).await?;
                }
            }
            Err(frame) => {
                if let Ok(trailers) = frame.into_trailers() {
                    send.send_trailers(trailers).await?;
                    break;
                }
            }
        }
    }
    send.finish().await?;
    Ok(sent)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::VecDeque;

    /// A receiving half that replays a script; `None` entries are "not yet" (Pending).
    struct Script(VecDeque<Option<Result<Option<Bytes>, StreamError>>>);

    impl H3Recv for Script {
        fn poll_data(&mut self, _cx: &mut Context<'_>) -> Poll<Result<Option<Bytes>, StreamError>> {
            match self.0.pop_front() {
                Some(Some(r)) => Poll::Ready(r),
                Some(None) => Poll::Pending,
                None => Poll::Ready(Ok(None)),
            }
        }
        fn poll_trailers(
            &mut self,
            _cx: &mut Context<'_>,
        ) -> Poll<Result<Option<HeaderMap>, StreamError>> {
            Poll::Ready(Ok(None))
        }
    }

    fn collect(mut body: TunnelBody<Script>) -> Vec<u8> {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let mut out = Vec::new();
        loop {
            match Pin::new(&mut body).poll_frame(&mut cx) {
                Poll::Ready(Some(Ok(f))) => out.extend_from_slice(&f.into_data().unwrap()),
                Poll::Ready(None) => return out,
                Poll::Ready(Some(Err(e))) => panic!("{e}"),
                Poll::Pending => continue,
            }
        }
    }

    #[test]
    fn an_empty_body_is_known_at_once() {
        let mut body = TunnelBody::new(Script(VecDeque::new()), ());
        assert!(body.ended_already());
        assert!(body.is_end_stream());
        assert_eq!(body.size_hint().exact(), Some(0));
    }

    #[test]
    fn peeking_loses_no_byte() {
        let script = [
            Some(Ok(Some(Bytes::from_static(b"ab")))),
            Some(Ok(Some(Bytes::from_static(b"c")))),
        ];
        let mut body = TunnelBody::new(Script(script.into_iter().collect()), ());
        assert!(!body.ended_already());
        assert!(!body.is_end_stream());
        assert_eq!(collect(body), b"abc");

        let script = [None, Some(Ok(Some(Bytes::from_static(b"late"))))];
        let mut body = TunnelBody::new(Script(script.into_iter().collect()), ());
        assert!(!body.ended_already(), "not arrived yet is not ended");
        assert_eq!(collect(body), b"late");
    }
}
