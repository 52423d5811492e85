//! Topic names and NATS-style patterns.
//!
//! A topic is dot-separated tokens (`orders.eu.created`). A pattern may use
//! `*` for exactly one token and `>` (last token only) for one or more
//! remaining tokens, so `orders.*` matches `orders.created` and `orders.>`
//! matches `orders.eu.created`.

use thiserror::Error;

/// Longest topic or pattern accepted, in bytes.
pub const MAX_TOPIC_BYTES: usize = 256;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum SubjectError {
    #[error("a topic must not be empty")]
    Empty,
    #[error("a topic is at most {MAX_TOPIC_BYTES} bytes")]
    TooLong,
    #[error("topic {0:?} has an empty token (two dots, or a leading or trailing dot)")]
    EmptyToken(String),
    #[error("topic {0:?} has a character that is not allowed (whitespace or a control character)")]
    BadCharacter(String),
    #[error("topic {0:?} uses a wildcard; publish to a concrete topic")]
    WildcardInTopic(String),
    #[error(
        "pattern {0:?} is invalid: '*' and '>' must be whole tokens, and '>' only the last one"
    )]
    BadWildcard(String),
}

fn check_tokens(text: &str) -> Result<(), SubjectError> {
    if text.is_empty() {
        return Err(SubjectError::Empty);
    }
    if text.len() > MAX_TOPIC_BYTES {
        return Err(SubjectError::TooLong);
    }
    if text.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(SubjectError::BadCharacter(text.to_string()));
    }
    if text.split('.').any(str::is_empty) {
        return Err(SubjectError::EmptyToken(text.to_string()));
    }
    Ok(())
}

/// Check a topic that a message is published to: no wildcards.
pub fn validate_topic(topic: &str) -> Result<(), SubjectError> {
    check_tokens(topic)?;
    if topic.split('.').any(|t| t.contains('*') || t.contains('>')) {
        return Err(SubjectError::WildcardInTopic(topic.to_string()));
    }
    Ok(())
}

/// A parsed subscription pattern.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Pattern {
    text: String,
    literal: bool,
}

impl Pattern {
    pub fn parse(text: &str) -> Result<Pattern, SubjectError> {
        check_tokens(text)?;
        let tokens: Vec<&str> = text.split('.').collect();
        let mut literal = true;
        for (i, token) in tokens.iter().enumerate() {
            let wild = token.contains('*') || token.contains('>');
            if !wild {
                continue;
            }
            literal = false;
            let whole = *token == "*" || (*token == ">" && i == tokens.len() - 1);
            if !whole {
                return Err(SubjectError::BadWildcard(text.to_string()));
            }
        }
        Ok(Pattern {
            text: text.to_string(),
            literal,
        })
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// True when the pattern has no wildcard (it matches one topic only).
    pub fn is_literal(&self) -> bool {
        self.literal
    }

    pub fn matches(&self, topic: &str) -> bool {
        if self.literal {
            return self.text == topic;
        }
        pattern_matches(&self.text, topic)
    }
}

/// Match a pattern's text against a topic, token by token.
pub fn pattern_matches(pattern: &str, topic: &str) -> bool {
    let mut topic_tokens = topic.split('.');
    for token in pattern.split('.') {
        if token == ">" {
            return topic_tokens.next().is_some();
        }
        match topic_tokens.next() {
            Some(t) if token == "*" || token == t => {}
            _ => return false,
        }
    }
    topic_tokens.next().is_none()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards_match_as_nats_does() {
        let cases = [
            ("orders.*", "orders.created", true),
            ("orders.*", "orders.eu.created", false),
            ("orders.*", "orders", false),
            ("orders.>", "orders.eu.created", true),
            ("orders.>", "orders", false),
            ("*.created", "orders.created", true),
            (">", "anything.at.all", true),
            ("orders.created", "orders.created", true),
            ("orders.created", "orders.created.x", false),
        ];
        for (pattern, topic, expected) in cases {
            let pattern = Pattern::parse(pattern).unwrap();
            assert_eq!(
                pattern.matches(topic),
                expected,
                "{} vs {topic}",
                pattern.as_str()
            );
        }
    }

    #[test]
    fn bad_names_are_rejected() {
        assert_eq!(validate_topic(""), Err(SubjectError::Empty));
        assert!(matches!(
            validate_topic("a..b"),
            Err(SubjectError::EmptyToken(_))
        ));
        assert!(matches!(
            validate_topic("a.*"),
            Err(SubjectError::WildcardInTopic(_))
        ));
        assert!(matches!(
            validate_topic("a b"),
            Err(SubjectError::BadCharacter(_))
        ));
        assert!(matches!(
            Pattern::parse("a.>.b"),
            Err(SubjectError::BadWildcard(_))
        ));
        assert!(matches!(
            Pattern::parse("a.b*"),
            Err(SubjectError::BadWildcard(_))
        ));
        assert!(validate_topic(&"a".repeat(MAX_TOPIC_BYTES + 1)).is_err());
    }
}
