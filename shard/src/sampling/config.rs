//! Per-request sampling settings: validation and the proto's "0 = off" conventions.

use pagedserve_proto::v1::SamplingParams;

/// Most `top_logprobs` alternatives a request may ask for (OpenAI's limit).
pub const MAX_TOP_LOGPROBS: u32 = 20;

/// Temperatures below this are treated as greedy (argmax, no RNG draw), as vLLM does.
pub const GREEDY_TEMPERATURE: f32 = 1e-5;

/// Validated sampling settings of one request. "Off" values: `top_p` 1, `top_k` 0, `min_p` 0,
/// penalties 0, `repetition_penalty` 1.
#[derive(Debug, Clone, PartialEq)]
pub struct SamplingConfig {
    pub temperature: f32,
    pub top_p: f32,
    pub top_k: u32,
    pub min_p: f32,
    pub seed: Option<u64>,
    pub presence_penalty: f32,
    pub frequency_penalty: f32,
    pub repetition_penalty: f32,
    pub logprobs: bool,
    pub top_logprobs: u32,
}

/// A sampling setting outside its valid range; the message is fit for an API client.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SamplingError {
    #[error("temperature must be a finite number >= 0, got {0}")]
    Temperature(f32),
    #[error("top_p must be in (0, 1], got {0}")]
    TopP(f32),
    #[error("min_p must be in [0, 1], got {0}")]
    MinP(f32),
    #[error("{name} must be in [-2, 2], got {value}")]
    Penalty { name: &'static str, value: f32 },
    #[error("repetition_penalty must be a finite number > 0, got {0}")]
    RepetitionPenalty(f32),
    #[error("top_logprobs must be at most {max}, got {requested}")]
    TopLogprobs { requested: u32, max: u32 },
}

impl Default for SamplingConfig {
    fn default() -> Self {
        Self::greedy()
    }
}

impl SamplingConfig {
    /// Argmax decoding with every filter and penalty off and no logprobs.
    pub fn greedy() -> Self {
        Self {
            temperature: 0.0,
            top_p: 1.0,
            top_k: 0,
            min_p: 0.0,
            seed: None,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            repetition_penalty: 1.0,
            logprobs: false,
            top_logprobs: 0,
        }
    }

    /// Validates ranges (temperature >= 0, 0 < top_p <= 1, 0 <= min_p <= 1, penalties in
    /// [-2, 2], repetition_penalty > 0, top_logprobs <= 20) and maps proto conventions:
    /// `top_p == 0` and `repetition_penalty == 0` are proto3's "unset" and mean off (1.0).
    /// `top_logprobs` only matters when `logprobs` is set.
    pub fn from_proto(
        p: &SamplingParams,
        logprobs: bool,
        top_logprobs: u32,
    ) -> Result<Self, SamplingError> {
        let config = Self {
            temperature: p.temperature,
            top_p: if p.top_p == 0.0 { 1.0 } else { p.top_p },
            top_k: p.top_k,
            min_p: p.min_p,
            seed: p.seed,
            presence_penalty: p.presence_penalty,
            frequency_penalty: p.frequency_penalty,
            repetition_penalty: if p.repetition_penalty == 0.0 {
                1.0
            } else {
                p.repetition_penalty
            },
            logprobs,
            top_logprobs,
        };
        config.validate()?;
        Ok(config)
    }

    /// Checks every range; written so that NaN fails each check.
    pub fn validate(&self) -> Result<(), SamplingError> {
        let t = self.temperature;
        if !(t.is_finite() && t >= 0.0) {
            return Err(SamplingError::Temperature(t));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err(SamplingError::TopP(self.top_p));
        }
        if !(self.min_p >= 0.0 && self.min_p <= 1.0) {
            return Err(SamplingError::MinP(self.min_p));
        }
        for (name, value) in [
            ("presence_penalty", self.presence_penalty),
            ("frequency_penalty", self.frequency_penalty),
        ] {
            if !(-2.0..=2.0).contains(&value) {
                return Err(SamplingError::Penalty { name, value });
            }
        }
        let r = self.repetition_penalty;
        if !(r.is_finite() && r > 0.0) {
            return Err(SamplingError::RepetitionPenalty(r));
        }
        if self.top_logprobs > MAX_TOP_LOGPROBS {
            return Err(SamplingError::TopLogprobs {
                requested: self.top_logprobs,
                max: MAX_TOP_LOGPROBS,
            });
        }
        Ok(())
    }

    /// Argmax without an RNG draw.
    pub fn is_greedy(&self) -> bool {
        self.temperature < GREEDY_TEMPERATURE
    }

    /// Whether any repetition, frequency or presence penalty changes the logits.
    pub fn has_penalties(&self) -> bool {
        self.repetition_penalty != 1.0
            || self.frequency_penalty != 0.0
            || self.presence_penalty != 0.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params() -> SamplingParams {
        SamplingParams {
            temperature: 0.7,
            top_p: 0.9,
            top_k: 40,
            min_p: 0.05,
            seed: Some(7),
            presence_penalty: 0.5,
            frequency_penalty: -0.5,
            repetition_penalty: 1.1,
        }
    }

    #[test]
    fn from_proto_keeps_valid_values() {
        let c = SamplingConfig::from_proto(&params(), true, 5);
        let c = c.unwrap_or_else(|e| panic!("valid params rejected: {e}"));
        assert_eq!(c.temperature, 0.7);
        assert_eq!(c.top_p, 0.9);
        assert_eq!(c.top_k, 40);
        assert_eq!(c.min_p, 0.05);
        assert_eq!(c.seed, Some(7));
        assert_eq!(c.presence_penalty, 0.5);
        assert_eq!(c.frequency_penalty, -0.5);
        assert_eq!(c.repetition_penalty, 1.1);
        assert!(c.logprobs);
        assert_eq!(c.top_logprobs, 5);
        assert!(!c.is_greedy());
        assert!(c.has_penalties());
    }

    #[test]
    fn proto_defaults_mean_greedy_with_everything_off() {
        let c = SamplingConfig::from_proto(&SamplingParams::default(), false, 0);
        assert_eq!(c, Ok(SamplingConfig::greedy()));
        assert!(SamplingConfig::greedy().is_greedy());
        assert!(!SamplingConfig::greedy().has_penalties());
    }

    #[test]
    fn from_proto_rejects_out_of_range_values() {
        let cases: Vec<(SamplingParams, SamplingError)> = vec![
            (
                SamplingParams {
                    temperature: -0.1,
                    ..params()
                },
                SamplingError::Temperature(-0.1),
            ),
            (
                SamplingParams {
                    temperature: f32::INFINITY,
                    ..params()
                },
                SamplingError::Temperature(f32::INFINITY),
            ),
            (
                SamplingParams {
                    top_p: 1.5,
                    ..params()
                },
                SamplingError::TopP(1.5),
            ),
            (
                SamplingParams {
                    top_p: -0.2,
                    ..params()
                },
                SamplingError::TopP(-0.2),
            ),
            (
                SamplingParams {
                    min_p: 1.01,
                    ..params()
                },
                SamplingError::MinP(1.01),
            ),
            (
                SamplingParams {
                    min_p: -0.01,
                    ..params()
                },
                SamplingError::MinP(-0.01),
            ),
            (
                SamplingParams {
                    presence_penalty: 2.5,
                    ..params()
                },
                SamplingError::Penalty {
                    name: "presence_penalty",
                    value: 2.5,
                },
            ),
            (
                SamplingParams {
                    frequency_penalty: -2.01,
                    ..params()
                },
                SamplingError::Penalty {
                    name: "frequency_penalty",
                    value: -2.01,
                },
            ),
            (
                SamplingParams {
                    repetition_penalty: -1.0,
                    ..params()
                },
                SamplingError::RepetitionPenalty(-1.0),
            ),
        ];
        for (p, want) in cases {
            assert_eq!(SamplingConfig::from_proto(&p, false, 0), Err(want));
        }
        assert_eq!(
            SamplingConfig::from_proto(&params(), true, 21),
            Err(SamplingError::TopLogprobs {
                requested: 21,
                max: 20
            })
        );
        assert!(SamplingConfig::from_proto(&params(), true, 20).is_ok());
    }

    #[test]
    fn nan_is_rejected_everywhere() {
        let nan = f32::NAN;
        for p in [
            SamplingParams {
                temperature: nan,
                ..params()
            },
            SamplingParams {
                top_p: nan,
                ..params()
            },
            SamplingParams {
                min_p: nan,
                ..params()
            },
            SamplingParams {
                presence_penalty: nan,
                ..params()
            },
            SamplingParams {
                frequency_penalty: nan,
                ..params()
            },
            SamplingParams {
                repetition_penalty: nan,
                ..params()
            },
        ] {
            assert!(SamplingConfig::from_proto(&p, false, 0).is_err(), "{p:?}");
        }
    }

    #[test]
    fn greedy_threshold_matches_vllm() {
        let mut c = SamplingConfig {
            temperature: 0.9e-5,
            ..SamplingConfig::greedy()
        };
        assert!(c.is_greedy());
        c.temperature = 1e-5;
        assert!(!c.is_greedy());
    }
}
