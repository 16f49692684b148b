//! Chat templates (HF `chat_template` Jinja) rendered with minijinja.

use std::sync::Arc;

use minijinja::value::{Enumerator, Object};
use minijinja::{Environment, Value};

use super::error::TemplateError;
use super::template_env::{RaisedException, hf_environment};

const TEMPLATE_NAME: &str = "chat";

/// One chat turn as the template sees it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

impl ChatMessage {
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        Self {
            role: role.into(),
            content: content.into(),
            name: None,
        }
    }
}

/// A message as a template map whose keys keep the order of the Python dict transformers
/// passes (`role`, `content`, `name`), so `tojson` and `.items()` print them the same way.
#[derive(Debug)]
struct MessageObject(ChatMessage);

impl Object for MessageObject {
    fn get_value(self: &Arc<Self>, key: &Value) -> Option<Value> {
        match key.as_str()? {
            "role" => Some(Value::from(self.0.role.as_str())),
            "content" => Some(Value::from(self.0.content.as_str())),
            "name" => self.0.name.as_deref().map(Value::from),
            _ => None,
        }
    }

    fn enumerate(self: &Arc<Self>) -> Enumerator {
        if self.0.name.is_some() {
            Enumerator::Str(&["role", "content", "name"])
        } else {
            Enumerator::Str(&["role", "content"])
        }
    }
}

/// A compiled chat template with the model's BOS/EOS strings.
pub struct ChatTemplate {
    env: Environment<'static>,
    /// A template that does not compile fails at render time, not at model load.
    compile_error: Option<String>,
    bos_token: String,
    eos_token: String,
}

impl ChatTemplate {
    pub fn new(source: String, bos_token: Option<String>, eos_token: Option<String>) -> Self {
        let mut env = hf_environment();
        let compile_error = env
            .add_template_owned(TEMPLATE_NAME, source)
            .err()
            .map(|e| describe(&e));
        Self {
            env,
            compile_error,
            bos_token: bos_token.unwrap_or_default(),
            eos_token: eos_token.unwrap_or_default(),
        }
    }

    /// Renders `messages` as transformers' `apply_chat_template(tokenize=False)` does.
    pub fn render(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
    ) -> Result<String, TemplateError> {
        if let Some(err) = &self.compile_error {
            return Err(TemplateError::Render(err.clone()));
        }
        let template = self
            .env
            .get_template(TEMPLATE_NAME)
            .map_err(|e| TemplateError::Render(describe(&e)))?;
        let messages: Vec<Value> = messages
            .iter()
            .map(|m| Value::from_object(MessageObject(m.clone())))
            .collect();
        // transformers always passes these, as None when unused.
        let ctx = minijinja::context! {
            messages => messages,
            tools => (),
            documents => (),
            add_generation_prompt => add_generation_prompt,
            bos_token => self.bos_token.as_str(),
            eos_token => self.eos_token.as_str(),
        };
        template.render(ctx).map_err(|e| match raised_message(&e) {
            Some(message) => TemplateError::Raised(message),
            None => TemplateError::Render(describe(&e)),
        })
    }
}

/// The message of a `raise_exception(...)` call anywhere in the error's source chain.
fn raised_message(err: &minijinja::Error) -> Option<String> {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(current) = source {
        if let Some(raised) = current.downcast_ref::<RaisedException>() {
            return Some(raised.0.clone());
        }
        source = current.source();
    }
    None
}

/// The error with its template line, e.g. "undefined value (in chat:1)".
fn describe(err: &minijinja::Error) -> String {
    let mut text = err.to_string();
    let mut source = std::error::Error::source(err);
    while let Some(inner) = source {
        text.push_str(": ");
        text.push_str(&inner.to_string());
        source = inner.source();
    }
    text
}
