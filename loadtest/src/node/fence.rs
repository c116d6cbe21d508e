//! The write-acceptance decision of a demo node, in one place.
//!
//! A node accepts a write only when the request carries an `X-Writer-Epoch` at least as high as
//! any epoch it has seen (in the shared log, after catching up, or in earlier requests), and,
//! unless started with `--no-promotion-needed`, only while it is the distributor: a storage node
//! that is not refuses every write (400, `Microstream-NAD: true`; `StorageNode-NAD` in the
//! newest API) before looking at anything else.

use serde::Serialize;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "error", rename_all = "snake_case")]
pub enum Refusal {
    /// The request's epoch is lower than one already seen: the sender follows a stale topology.
    StaleEpoch {
        request_epoch: u64,
        highest_epoch: u64,
    },
    /// This node is not the distributor (not promoted, or demoted since).
    NotADistributor,
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
            Refusal::NotADistributor => {
                "this node is not the distributor: it has not been promoted to writer \
                 (activate-distributor)"
                    .to_owned()
            }
        }
    }
}

/// `highest_seen` must already include everything in the log (the caller caught up under the
/// log lock) and every epoch seen in requests.
/// The role comes first, as on a real node, which knows nothing of epochs: a sender that reaches
/// a node that is not the distributor learns that from the answer, whatever epoch it carries.
pub fn decide(request_epoch: u64, highest_seen: u64, may_write: bool) -> Result<(), Refusal> {
    if !may_write {
        return Err(Refusal::NotADistributor);
    }
    if request_epoch < highest_seen {
        return Err(Refusal::StaleEpoch {
            request_epoch,
            highest_epoch: highest_seen,
        });
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
    fn not_a_distributor_is_refused_whatever_the_epoch() {
        assert_eq!(decide(1, 2, false), Err(Refusal::NotADistributor));
        assert_eq!(decide(2, 2, false), Err(Refusal::NotADistributor));
        assert_eq!(decide(9, 2, false), Err(Refusal::NotADistributor));
        let body = serde_json::to_value(Refusal::NotADistributor).unwrap();
        assert_eq!(body["error"], "not_a_distributor");
    }
}
