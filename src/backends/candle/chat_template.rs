//! The model's chat template, rendered the way Hugging Face renders it.
//!
//! A chat model only answers well when its prompt has the exact shape it was tuned on, and the
//! GGUF stores that shape as a Jinja template (`tokenizer.chat_template`). HF renders it with
//! `trim_blocks` and `lstrip_blocks`, passes `messages`, `add_generation_prompt`, `bos_token` and
//! `eos_token`, and offers `raise_exception`; templates also call Python string methods such as
//! `.strip()`. This module reproduces that with minijinja so the prompt matches, byte for byte,
//! what the model's authors intended. A model without a template gets ChatML.

use minijinja::{Environment, ErrorKind, Value};
use serde::Serialize;

use crate::api::types::Message;
use crate::error::Error;

/// Used when the GGUF carries no template.
pub const CHATML: &str = "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

const NAME: &str = "chat";

/// A compiled chat template.
pub struct ChatTemplate {
    env: Environment<'static>,
    bos_token: String,
    eos_token: String,
}

/// One message as templates see it: `role` and `content` as strings.
#[derive(Serialize)]
struct TemplateMessage<'a> {
    role: &'a str,
    content: String,
}

#[derive(Serialize)]
struct Context<'a> {
    messages: Vec<TemplateMessage<'a>>,
    add_generation_prompt: bool,
    bos_token: &'a str,
    eos_token: &'a str,
}

// === impl ChatTemplate ===

impl ChatTemplate {
    /// Compiles `source`; a syntax error is reported now, at load, not on the first request.
    pub fn new(
        source: &str,
        bos_token: Option<&str>,
        eos_token: Option<&str>,
    ) -> anyhow::Result<Self> {
        let mut env = Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", raise_exception);
        env.add_template_owned(NAME, source.to_owned())
            .map_err(|e| anyhow::anyhow!("chat template does not compile: {e}"))?;
        Ok(ChatTemplate {
            env,
            bos_token: bos_token.unwrap_or_default().to_owned(),
            eos_token: eos_token.unwrap_or_default().to_owned(),
        })
    }

    /// The prompt for `messages`, ending where the assistant's answer begins.
    pub fn render(&self, messages: &[Message]) -> Result<String, Error> {
        let ctx = Context {
            messages: messages
                .iter()
                .map(|m| TemplateMessage {
                    role: m.role.as_str(),
                    content: m.text(),
                })
                .collect(),
            add_generation_prompt: true,
            bos_token: &self.bos_token,
            eos_token: &self.eos_token,
        };
        let tmpl = self
            .env
            .get_template(NAME)
            .map_err(|e| Error::Internal(format!("chat template missing: {e}")))?;
        tmpl.render(&ctx).map_err(|e| {
            if e.kind() == ErrorKind::InvalidOperation {
                // `raise_exception(...)`: the template refuses this conversation (roles that do not
                // alternate, an unsupported role). The client can fix that.
                Error::invalid(
                    "messages",
                    format!(
                        "The model's chat template refused the messages: {}",
                        e.detail().unwrap_or("no reason given")
                    ),
                )
            } else {
                Error::Internal(format!("chat template failed: {e:#}"))
            }
        })
    }
}

fn raise_exception(message: String) -> Result<Value, minijinja::Error> {
    Err(minijinja::Error::new(ErrorKind::InvalidOperation, message))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::types::{Content, Role};

    fn msg(role: Role, text: &str) -> Message {
        Message {
            role,
            content: Some(Content::Text(text.into())),
            extra: Default::default(),
        }
    }

    #[test]
    fn chatml_with_generation_prompt() {
        let t = ChatTemplate::new(CHATML, None, None).unwrap();
        let out = t
            .render(&[msg(Role::System, "Be brief."), msg(Role::User, "Hi")])
            .unwrap();
        assert_eq!(
            out,
            "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
        );
    }

    #[test]
    fn hf_conventions_trim_blocks_bos_and_python_methods() {
        let src = "{{ bos_token }}{% for m in messages %}\n  {% if m.role == 'user' %}\n[U]{{ m.content.strip() }}{{ eos_token }}\n  {% endif %}\n{% endfor %}";
        let t = ChatTemplate::new(src, Some("<s>"), Some("</s>")).unwrap();
        let out = t.render(&[msg(Role::User, "  hello  ")]).unwrap();
        assert_eq!(out, "<s>[U]hello</s>\n");
    }

    #[test]
    fn raise_exception_is_a_client_error() {
        let src = "{% if messages[0].role != 'user' %}{{ raise_exception('first must be user') }}{% endif %}ok";
        let t = ChatTemplate::new(src, None, None).unwrap();
        assert_eq!(t.render(&[msg(Role::User, "x")]).unwrap(), "ok");
        match t.render(&[msg(Role::Assistant, "x")]) {
            Err(Error::InvalidRequest { message, param, .. }) => {
                assert!(message.contains("first must be user"), "{message}");
                assert_eq!(param.as_deref(), Some("messages"));
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn syntax_error_fails_at_load() {
        assert!(ChatTemplate::new("{% for %}", None, None).is_err());
    }
}
