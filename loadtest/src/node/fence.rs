//! The write-acceptance decision of a demo node, in one place.
//!
//! A node accepts a write only when the request carries an `X-Writer-Epoch` at least as high as
//! any epoch it has seen (in the shared log, after catching up, or in earlier requests), and,
//! with `--require-promotion`, only once it has been promoted: a MicroStream reader refuses
//! writes, and a node never turns back into a reader.

use serde::Serialize;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "error", rename_all = "snake_case")]
pub enum Refusal {
    /// The request's epoch is lower than one already seen: the sender follows a stale topology.
    StaleEpoch {
        request_epoch: u64,
        highest_epoch: u64,
    },
    /// `--require-promotion` and this node has not been promoted to writer.
    NotWriter,
}

impl Refusal {
    pub fn message(&self) -> String {
        match self {
            Refusal::StaleEpoch {
                request_epoch,
                highest_epoch,
            } => format!(
                "X-Writer-Epoch {request_epoch} is lower than epoch {highest_epoch} already seen; \
                 the sender follows a stale topology"
            ),
            Refusal::NotWriter => {
                "this node has not been promoted to writer (activate-distributor)".to_owned()
            }
        }
    }
}

/// `highest_seen` must already include everything in the log (the caller caught up under the
/// log lock) and every epoch seen in requests.
pub fn decide(request_epoch: u64, highest_seen: u64, may_write: bool) -> Result<(), Refusal> {
    if request_epoch < highest_seen {
        return Err(Refusal::StaleEpoch {
            request_epoch,
            highest_epoch: highest_seen,
        });
    }
    if !may_write {
        return Err(Refusal::NotWriter);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_or_higher_epoch_is_accepted() {
        assert_eq!(decide(5, 5, true), Ok(()));
        assert_eq!(decide(6, 5, true), Ok(()));
        assert_eq!(decide(0, 0, true), Ok(()));
    }

    #[test]
    fn lower_epoch_is_refused_naming_both() {
        assert_eq!(
            decide(4, 5, true),
            Err(Refusal::StaleEpoch {
                request_epoch: 4,
                highest_epoch: 5
            })
        );
        let body = serde_json::to_value(decide(4, 5, true).unwrap_err()).unwrap();
        assert_eq!(body["error"], "stale_epoch");
        assert_eq!(body["request_epoch"], 4);
        assert_eq!(body["highest_epoch"], 5);
    }

    #[test]
    fn stale_epoch_wins_over_not_writer() {
        // A stale sender must learn that its topology is old, whatever this node's role.
        assert!(matches!(
            decide(1, 2, false),
            Err(Refusal::StaleEpoch { .. })
        ));
        assert_eq!(decide(2, 2, false), Err(Refusal::NotWriter));
    }
}
