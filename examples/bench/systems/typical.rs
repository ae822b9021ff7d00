//! lapin-typical: lapin as most code uses it, one `basic.ack` per delivery.

use std::sync::Arc;
use std::time::Duration;

use lapin::options::BasicAckOptions;
use tokio::task::JoinSet;

use super::raw::next_event;
use crate::measure::{Recorder, handle};

/// Next delivery, deserialize, handle, ack that one delivery; `recorder.n` deliveries in all
/// (a redelivery among them leaves the round short, and it times out rather than ends early).
/// With a slow handler (S2) each delivery gets its own task, or the handlers would run one at a
/// time.
pub(super) async fn consume(
    mut consumer: lapin::Consumer,
    recorder: Arc<Recorder>,
    delay: Option<Duration>,
) -> Result<(), String> {
    let mut tasks = JoinSet::new();
    for _ in 0..recorder.n {
        let (delivery, event) = next_event(&mut consumer, &recorder).await?;
        let acker = delivery.acker;
        match delay {
            None => {
                handle(&recorder, &event, None).await;
                acker
                    .ack(BasicAckOptions::default())
                    .await
                    .map_err(|e| format!("basic.ack: {e}"))?;
            }
            Some(delay) => {
                let recorder = recorder.clone();
                tasks.spawn(async move {
                    handle(&recorder, &event, Some(delay)).await;
                    acker
                        .ack(BasicAckOptions::default())
                        .await
                        .map_err(|e| format!("basic.ack: {e}"))
                });
                while let Some(done) = tasks.try_join_next() {
                    done.map_err(|e| e.to_string())??;
                }
            }
        }
    }
    while let Some(done) = tasks.join_next().await {
        done.map_err(|e| e.to_string())??;
    }
    Ok(())
}
