//! Non-streaming: gathers every update of every choice into final texts.

use crate::api::generation::{Generation, TokenDetail};
use crate::api::types::Usage;
use crate::client::Finish;
use crate::error::ApiError;

#[derive(Debug, Clone, Default, PartialEq)]
pub struct CollectedChoice {
    pub text: String,
    pub tokens: Vec<TokenDetail>,
    pub finish: Option<Finish>,
}

/// Runs the generation to the end; any failure fails the whole request.
pub async fn collect(
    mut generation: Generation,
) -> Result<(Vec<CollectedChoice>, Usage), ApiError> {
    let mut choices = vec![CollectedChoice::default(); generation.num_choices()];
    while let Some(update) = generation.next().await {
        let update = update?;
        if let Some(choice) = choices.get_mut(update.index as usize) {
            choice.text.push_str(&update.text);
            choice.tokens.extend(update.tokens);
            choice.finish = update.finish.or(choice.finish);
        }
    }
    Ok((choices, generation.usage()))
}
