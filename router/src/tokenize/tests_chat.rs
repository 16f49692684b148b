//! Chat templates against transformers' `render_jinja_template` output
//! (testdata/make_expected.py).

use serde::Deserialize;

use super::chat_template::{ChatMessage, ChatTemplate};
use super::error::TemplateError;
use super::test_support::{smollm2, tiny_tokenizer};

#[derive(Deserialize)]
struct Fixture {
    smollm2: Vec<Case>,
    custom: Vec<Case>,
}

#[derive(Deserialize)]
struct Case {
    #[serde(default)]
    name: String,
    #[serde(default)]
    template: String,
    messages: Vec<Message>,
    add_generation_prompt: bool,
    #[serde(default)]
    bos_token: String,
    #[serde(default)]
    eos_token: String,
    expected: Option<String>,
    raised: Option<String>,
}

#[derive(Deserialize)]
struct Message {
    role: String,
    content: String,
}

impl Case {
    fn messages(&self) -> Vec<ChatMessage> {
        self.messages
            .iter()
            .map(|m| ChatMessage::new(m.role.clone(), m.content.clone()))
            .collect()
    }

    fn check(&self, rendered: Result<String, TemplateError>) {
        match (&self.expected, &self.raised, rendered) {
            (Some(expected), _, Ok(text)) => assert_eq!(&text, expected, "case {}", self.name),
            (_, Some(raised), Err(TemplateError::Raised(message))) => {
                assert_eq!(&message, raised, "case {}", self.name)
            }
            (_, _, other) => panic!("case {}: unexpected {other:?}", self.name),
        }
    }
}

fn fixture() -> Fixture {
    serde_json::from_str(include_str!("testdata/chat_expected.json")).expect("fixture parses")
}

#[test]
fn smollm2_template_matches_transformers() {
    let tok = smollm2();
    let cases = fixture().smollm2;
    assert!(cases.len() >= 4);
    for case in &cases {
        case.check(tok.apply_chat_template(&case.messages(), case.add_generation_prompt));
    }
}

#[test]
fn hf_environment_matches_jinja2() {
    let cases = fixture().custom;
    assert!(cases.iter().any(|c| c.raised.is_some()));
    for case in &cases {
        let template = ChatTemplate::new(
            case.template.clone(),
            Some(case.bos_token.clone()),
            Some(case.eos_token.clone()),
        );
        case.check(template.render(&case.messages(), case.add_generation_prompt));
    }
}

#[test]
fn broken_template_is_a_render_error() {
    let template = ChatTemplate::new("{% for m in messages %}".into(), None, None);
    let err = template
        .render(&[ChatMessage::new("user", "hi")], true)
        .expect_err("unclosed for");
    assert!(matches!(err, TemplateError::Render(_)), "{err:?}");
    let template = ChatTemplate::new("{{ messages[0].content.nope() }}".into(), None, None);
    let err = template
        .render(&[ChatMessage::new("user", "hi")], true)
        .expect_err("unknown method");
    assert!(matches!(err, TemplateError::Render(_)), "{err:?}");
}

#[test]
fn message_name_is_visible_to_templates() {
    let template = ChatTemplate::new(
        "{% for m in messages %}{{ m.name or 'anon' }}:{{ m | tojson }};{% endfor %}".into(),
        None,
        None,
    );
    let mut named = ChatMessage::new("user", "hi");
    named.name = Some("ann".into());
    let text = template
        .render(&[named, ChatMessage::new("user", "yo")], false)
        .expect("renders");
    assert_eq!(
        text,
        r#"ann:{"role": "user", "content": "hi", "name": "ann"};anon:{"role": "user", "content": "yo"};"#
    );
}

#[test]
fn strftime_now_renders_a_date() {
    let template = ChatTemplate::new("{{ strftime_now('%Y-%m-%d') }}".into(), None, None);
    let text = template.render(&[], false).expect("renders");
    assert_eq!(text.len(), 10, "{text}");
    assert!(text.starts_with("20"), "{text}");
}

#[test]
fn model_without_template_reports_missing() {
    let mut vocab = super::test_support::tiny_byte_level_vocab();
    vocab.chat_template = None;
    let tok = super::ModelTokenizer::from_vocab(&vocab).expect("builds");
    assert!(!tok.has_chat_template());
    let err = tok.apply_chat_template(&[], true).expect_err("no template");
    assert!(matches!(err, TemplateError::Missing));
    let with = tiny_tokenizer();
    assert_eq!(
        with.apply_chat_template(&[ChatMessage::new("user", "x")], true)
            .expect("renders"),
        "<|start|>x"
    );
}
