//! Streaming a workspace export: a producer that writes a tar with blocking
//! I/O runs on a blocking thread and hands its bytes to an async consumer
//! in bounded chunks ([`export_blocking`]). Every backend's export goes
//! through here, so none blocks an async worker and all answer alike: an
//! error before the first byte is an error, a later one ends the stream.

use crate::RuntimeError;
use std::io::{self, Write};
use tokio::sync::{mpsc, oneshot};

/// The chunks of an export as they are produced; an `Err` item ends it
/// early (the client sees a truncated body). Dropping the receiver stops
/// the producer at its next write.
pub type ExportStream = mpsc::Receiver<io::Result<Vec<u8>>>;

/// Size of the chunks an export streams.
pub const EXPORT_CHUNK: usize = 256 * 1024;

/// Chunks in flight between the producer and the consumer.
const EXPORT_DEPTH: usize = 4;

/// Runs `produce` on a blocking thread with a writer whose bytes become an
/// [`ExportStream`]. Returns once the first chunk is on its way (or the
/// producer finished): a failure before that is returned here, so the
/// caller can answer with an error instead of an empty stream.
pub async fn export_blocking<F>(produce: F) -> Result<ExportStream, RuntimeError>
where
    F: FnOnce(&mut (dyn Write + Send)) -> Result<(), RuntimeError> + Send + 'static,
{
    let (tx, rx) = mpsc::channel(EXPORT_DEPTH);
    let (started_tx, started) = oneshot::channel();
    tokio::task::spawn_blocking(move || {
        let mut w = ChannelWriter {
            tx: tx.clone(),
            buf: Vec::with_capacity(EXPORT_CHUNK),
            started: Some(started_tx),
        };
        let r = match produce(&mut w) {
            Err(e) => match w.started.take() {
                // Nothing sent yet: the caller answers with the error.
                Some(started) => {
                    let _ = started.send(Err(e));
                    return;
                }
                None => Err(io::Error::other(e.to_string())),
            },
            Ok(()) => w.flush().map(|()| {
                // An export of nothing at all is an empty stream.
                if let Some(started) = w.started.take() {
                    let _ = started.send(Ok(()));
                }
            }),
        };
        if let Err(e) = r {
            if e.kind() != io::ErrorKind::BrokenPipe {
                tracing::warn!("export failed: {e}");
                let _ = tx.blocking_send(Err(e));
            }
        }
    });
    match started.await {
        Ok(Ok(())) => Ok(rx),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(RuntimeError::Task {
            context: "exporting a workspace",
            message: "the export ended without a result".into(),
        }),
    }
}

/// Writes the bytes of an export into the channel in chunks (blocking).
struct ChannelWriter {
    tx: mpsc::Sender<io::Result<Vec<u8>>>,
    buf: Vec<u8>,
    /// Told when the first chunk is on its way.
    started: Option<oneshot::Sender<Result<(), RuntimeError>>>,
}

impl Write for ChannelWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= EXPORT_CHUNK {
            self.flush()?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = std::mem::replace(&mut self.buf, Vec::with_capacity(EXPORT_CHUNK));
        let sent = self.tx.blocking_send(Ok(chunk)).map_err(|_| {
            io::Error::new(
                io::ErrorKind::BrokenPipe,
                "the client stopped reading the export",
            )
        });
        if let Some(started) = self.started.take() {
            let _ = started.send(Ok(()));
        }
        sent
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn drain(mut rx: ExportStream) -> (usize, bool) {
        let (mut n, mut failed) = (0, false);
        while let Some(item) = rx.recv().await {
            match item {
                Ok(chunk) => n += chunk.len(),
                Err(_) => failed = true,
            }
        }
        (n, failed)
    }

    fn bytes(n: usize) -> impl FnOnce(&mut (dyn Write + Send)) -> Result<(), RuntimeError> {
        move |out| {
            out.write_all(&vec![7u8; n])
                .map_err(|e| RuntimeError::io("writing", e))
        }
    }

    #[tokio::test]
    async fn an_export_streams_everything_in_chunks() {
        for n in [0, 10, 3 * EXPORT_CHUNK + 5] {
            let rx = export_blocking(bytes(n)).await.unwrap();
            assert_eq!(drain(rx).await, (n, false), "export of {n} bytes");
        }
    }

    #[tokio::test]
    async fn a_failure_before_the_first_byte_is_an_error_and_a_later_one_ends_the_stream() {
        let early = export_blocking(|_| Err(RuntimeError::NotFound("volume of w".into()))).await;
        assert!(matches!(early, Err(RuntimeError::NotFound(_))));

        let n = 2 * EXPORT_CHUNK;
        let rx = export_blocking(move |out| {
            bytes(n)(out)?;
            Err(RuntimeError::Busy("disk on fire".into()))
        })
        .await
        .unwrap();
        let (got, failed) = drain(rx).await;
        assert!(failed, "the late failure was not reported");
        assert!((EXPORT_CHUNK..=n).contains(&got), "{got}");
    }

    #[tokio::test]
    async fn a_consumer_that_goes_away_stops_the_producer() {
        let (done_tx, done) = oneshot::channel();
        let rx = export_blocking(move |out| {
            let mut r = Ok(());
            for _ in 0..1000 {
                if let Err(e) = out.write_all(&vec![1u8; EXPORT_CHUNK]) {
                    r = Err(e);
                    break;
                }
            }
            let _ = done_tx.send(r.is_err());
            Ok(())
        })
        .await
        .unwrap();
        drop(rx);
        assert!(done.await.unwrap(), "the producer wrote on after the drop");
    }
}
