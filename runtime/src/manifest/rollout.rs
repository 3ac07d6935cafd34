//! How a cluster replaces one version of an app by the next:
//! `[component.<name>.rollout]` (how many replicas may be added or missing
//! while it does) and `[app] canary` (the shares of requests the new
//! version gets, step by step, before it takes all of them).

use super::DurationSpec;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::time::Duration;

/// A number of replicas, given as a count (`1`) or as a percentage of the
/// component's desired replicas (`"25%"`), as Kubernetes takes them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(into = "BoundText")]
pub enum Bound {
    /// This many replicas.
    Count(u32),
    /// This percentage (0 to 100) of the desired replicas.
    Percent(u32),
}

/// A [`Bound`] as written: a number or a `"N%"` string.
#[derive(Serialize)]
#[serde(untagged)]
enum BoundText {
    Count(u32),
    Text(String),
}

impl TryFrom<BoundText> for Bound {
    type Error = String;

    fn try_from(text: BoundText) -> Result<Bound, String> {
        match text {
            BoundText::Count(n) if n > crate::manifest::MAX_REPLICAS => Err(format!(
                "{n} replicas is over the limit of {} per component",
                crate::manifest::MAX_REPLICAS
            )),
            BoundText::Count(n) => Ok(Bound::Count(n)),
            BoundText::Text(text) => {
                let percent = text
                    .trim()
                    .strip_suffix('%')
                    .and_then(|n| n.trim().parse::<u32>().ok())
                    .ok_or_else(|| {
                        format!(
                            "{text:?} is neither a count of replicas (1) nor a percentage (\"25%\")"
                        )
                    })?;
                if percent > 100 {
                    return Err(format!("{text:?} is over 100%"));
                }
                Ok(Bound::Percent(percent))
            }
        }
    }
}

impl<'de> Deserialize<'de> for Bound {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Bound, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = Bound;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a count of replicas (1) or a percentage (\"25%\")")
            }

            fn visit_u64<E: serde::de::Error>(self, n: u64) -> Result<Bound, E> {
                let n = u32::try_from(n).unwrap_or(u32::MAX);
                Bound::try_from(BoundText::Count(n)).map_err(E::custom)
            }

            fn visit_i64<E: serde::de::Error>(self, n: i64) -> Result<Bound, E> {
                match u64::try_from(n) {
                    Ok(n) => self.visit_u64(n),
                    Err(_) => Err(E::custom(format!(
                        "{n} is negative: give a count of replicas (1) or a percentage (\"25%\")"
                    ))),
                }
            }

            fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<Bound, E> {
                Bound::try_from(BoundText::Text(text.to_string())).map_err(E::custom)
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

impl From<Bound> for BoundText {
    fn from(bound: Bound) -> BoundText {
        match bound {
            Bound::Count(n) => BoundText::Count(n),
            Bound::Percent(p) => BoundText::Text(format!("{p}%")),
        }
    }
}

impl fmt::Display for Bound {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Bound::Count(n) => write!(f, "{n}"),
            Bound::Percent(p) => write!(f, "{p}%"),
        }
    }
}

impl Bound {
    /// The replicas this allows for a component of `desired` replicas; a
    /// percentage is rounded up when `round_up` (surge), else down
    /// (unavailable), as Kubernetes does.
    pub fn of(self, desired: u32, round_up: bool) -> u32 {
        match self {
            Bound::Count(n) => n,
            Bound::Percent(p) => {
                let scaled = u64::from(desired) * u64::from(p);
                let replicas = if round_up {
                    scaled.div_ceil(100)
                } else {
                    scaled / 100
                };
                replicas as u32
            }
        }
    }

    fn is_zero(self) -> bool {
        matches!(self, Bound::Count(0) | Bound::Percent(0))
    }
}

/// `[component.<name>.rollout]`: how a new version's replicas replace the
/// old ones. Each new replica counts only once it is ready (loaded, an
/// instance created, and its `health` path answering when it has one).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "RolloutKeys")]
pub struct RolloutBounds {
    /// `max_surge = 1` or `"25%"`: replicas of the new version that may run
    /// beyond the desired count while old ones still serve. Default
    /// [`DEFAULT_MAX_SURGE`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_surge: Option<Bound>,
    /// `max_unavailable = 0` or `"25%"`: how far below the desired count
    /// the ready replicas may fall while old ones are replaced. Default 0:
    /// capacity never dips.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_unavailable: Option<Bound>,
}

/// The keys of `[component.<name>.rollout]` as written, checked together.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct RolloutKeys {
    max_surge: Option<Bound>,
    max_unavailable: Option<Bound>,
}

/// Replicas a rollout may add beyond the desired count when the manifest
/// does not say: a quarter, rounded up, so at least one.
pub const DEFAULT_MAX_SURGE: Bound = Bound::Percent(25);

impl TryFrom<RolloutKeys> for RolloutBounds {
    type Error = String;

    fn try_from(keys: RolloutKeys) -> Result<RolloutBounds, String> {
        let bounds = RolloutBounds {
            max_surge: keys.max_surge,
            max_unavailable: keys.max_unavailable,
        };
        if bounds.surge().is_zero() && bounds.unavailable().is_zero() {
            return Err("rollout.max_surge and rollout.max_unavailable are both 0: a rollout could neither start a new replica nor stop an old one, so it would never progress; allow one of them (the default is max_surge = \"25%\", max_unavailable = 0)".to_string());
        }
        Ok(bounds)
    }
}

impl RolloutBounds {
    /// `max_surge`, or its default.
    pub fn surge(&self) -> Bound {
        self.max_surge.unwrap_or(DEFAULT_MAX_SURGE)
    }

    /// `max_unavailable`, or its default (0).
    pub fn unavailable(&self) -> Bound {
        self.max_unavailable.unwrap_or(Bound::Count(0))
    }

    /// `(surge, unavailable)` in replicas for a component of `desired`
    /// replicas: never both 0 (a percentage can round to nothing for a
    /// small count; then one replica may surge), so a rollout progresses.
    pub fn for_desired(&self, desired: u32) -> (u32, u32) {
        let surge = self.surge().of(desired, true);
        let unavailable = self.unavailable().of(desired, false);
        if surge == 0 && unavailable == 0 {
            (1, 0)
        } else {
            (surge, unavailable)
        }
    }
}

/// The shortest pause between canary steps.
pub const MIN_CANARY_INTERVAL: Duration = Duration::from_secs(1);
/// The longest pause between canary steps.
pub const MAX_CANARY_INTERVAL: Duration = Duration::from_secs(7 * 24 * 3600);
/// The pause between canary steps when the manifest does not say.
pub const DEFAULT_CANARY_INTERVAL: Duration = Duration::from_secs(60);

/// Checks canary steps (`[app] canary`, or `skiff deploy --canary`):
/// percentages from 0 to 100, increasing; returns them ending at 100 (a
/// last step of 100 is added when missing).
///
/// # Errors
///
/// A step over 100, or steps not increasing, named.
pub fn canary_steps(steps: &[u32]) -> Result<Vec<u32>, String> {
    if let Some(step) = steps.iter().find(|s| **s > 100) {
        return Err(format!(
            "canary step {step} is not a percentage: give shares of requests from 0 to 100"
        ));
    }
    if steps.windows(2).any(|pair| pair[0] >= pair[1]) {
        return Err(format!(
            "canary steps {steps:?} must increase, each a larger share of requests than the last"
        ));
    }
    let mut steps = steps.to_vec();
    if steps.last() != Some(&100) {
        steps.push(100);
    }
    Ok(steps)
}

/// Checks `[app] canary_interval`.
///
/// # Errors
///
/// As [`check_canary_interval`].
pub fn canary_interval(interval: Option<DurationSpec>) -> Result<Duration, String> {
    check_canary_interval(interval.map_or(DEFAULT_CANARY_INTERVAL, |d| d.as_duration()))
}

/// Checks a pause between canary steps.
///
/// # Errors
///
/// An interval under [`MIN_CANARY_INTERVAL`] or over
/// [`MAX_CANARY_INTERVAL`].
pub fn check_canary_interval(interval: Duration) -> Result<Duration, String> {
    if interval > MAX_CANARY_INTERVAL {
        return Err(format!(
            "canary_interval must be at most {} days: promote a canary sooner with `skiff promote`",
            MAX_CANARY_INTERVAL.as_secs() / 86_400
        ));
    }
    if interval < MIN_CANARY_INTERVAL {
        return Err(format!(
            "canary_interval must be at least {}s: each step needs time to show errors",
            MIN_CANARY_INTERVAL.as_secs()
        ));
    }
    Ok(interval)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_round_surge_up_and_unavailable_down() {
        assert_eq!(Bound::Percent(25).of(3, true), 1);
        assert_eq!(Bound::Percent(25).of(3, false), 0);
        assert_eq!(Bound::Percent(50).of(5, true), 3);
        assert_eq!(Bound::Count(2).of(9, false), 2);
        let bounds = RolloutBounds {
            max_surge: Some(Bound::Percent(0)),
            max_unavailable: Some(Bound::Percent(10)),
        };
        // 10% of 3 rounds down to 0: one replica surges instead.
        assert_eq!(bounds.for_desired(3), (1, 0));
        assert_eq!(bounds.for_desired(20), (0, 2));
    }

    #[test]
    fn a_bound_is_a_count_or_a_percentage_and_says_what_was_wrong() {
        #[derive(Deserialize, Debug)]
        struct Keys {
            #[allow(dead_code)]
            max_surge: Bound,
        }
        let parse = |text: &str| toml::from_str::<Keys>(&format!("max_surge = {text}"));
        assert!(parse("1").is_ok() && parse("\"25%\"").is_ok());
        for (text, said) in [
            ("-1", "negative"),
            ("\"abc\"", "neither a count"),
            ("4294967295", "over the limit"),
            ("\"150%\"", "over 100%"),
        ] {
            let error = parse(text).unwrap_err().to_string();
            assert!(error.contains(said), "{text}: {error}");
            assert!(!error.contains("BoundText"), "{error}");
        }
    }

    #[test]
    fn canary_steps_must_increase_and_end_at_100() {
        assert_eq!(canary_steps(&[10]).unwrap(), vec![10, 100]);
        assert_eq!(canary_steps(&[10, 50, 100]).unwrap(), vec![10, 50, 100]);
        assert!(canary_steps(&[50, 10]).unwrap_err().contains("increase"));
        assert!(canary_steps(&[150]).unwrap_err().contains("150"));
        assert!(canary_interval(Some(DurationSpec::secs(0))).is_err());
    }
}
