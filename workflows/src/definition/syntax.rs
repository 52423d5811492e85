//! Reading YAML or JSON into a size-bounded `serde_json::Value`.

use std::cell::Cell;
use std::fmt;

use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Number, Value};

use super::types::{DefinitionError, MAX_EXPANDED_BYTES};

pub(super) fn parse_json(bytes: &[u8]) -> Result<Value, DefinitionError> {
    let budget = Budget::new(MAX_EXPANDED_BYTES);
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value = ValueSeed(&budget)
        .deserialize(&mut de)
        .map_err(|e| budget.error(|| format!("JSON: {}", explain(&e.to_string()))))?;
    de.end()
        .map_err(|e| DefinitionError::Syntax(format!("JSON: {e}")))?;
    Ok(value)
}

pub(super) fn parse_yaml(bytes: &[u8]) -> Result<Value, DefinitionError> {
    let budget = Budget::new(MAX_EXPANDED_BYTES);
    let mut documents = serde_yaml::Deserializer::from_slice(bytes);
    let Some(first) = documents.next() else {
        return Err(DefinitionError::Syntax("the definition is empty".into()));
    };
    let value = ValueSeed(&budget)
        .deserialize(first)
        .map_err(|e| budget.error(|| format!("YAML: {}", explain(&e.to_string()))))?;
    if documents.next().is_some() {
        return Err(DefinitionError::Syntax(
            "YAML: the input holds more than one document ('---'); a definition is exactly one"
                .into(),
        ));
    }
    Ok(value)
}

/// The parsers' limits, in words a user can act on.
fn explain(message: &str) -> String {
    if message.contains("repetition limit exceeded") {
        return format!(
            "{message}: YAML aliases ('*name') expand to too much; write the repeated parts out"
        );
    }
    if message.contains("recursion limit exceeded") {
        return format!("{message}: the document nests lists and maps too deeply");
    }
    message.to_owned()
}

/// The length of `value` as compact JSON, without building it.
pub(super) fn json_size(value: &Value) -> Result<usize, DefinitionError> {
    let mut counter = ByteCounter(0);
    serde_json::to_writer(&mut counter, value).map_err(|e| {
        DefinitionError::Syntax(format!("cannot express the definition as JSON: {e}"))
    })?;
    Ok(counter.0)
}

struct ByteCounter(usize);

impl std::io::Write for ByteCounter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0 = self.0.saturating_add(buf.len());
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Bounds the JSON a parse may build: every node is charged (at most) its
/// size as compact JSON before it is allocated, so a YAML alias bomb stops at
/// the limit instead of expanding.
struct Budget {
    limit: usize,
    used: Cell<usize>,
    exceeded: Cell<bool>,
}

impl Budget {
    fn new(limit: usize) -> Budget {
        Budget {
            limit,
            used: Cell::new(0),
            exceeded: Cell::new(false),
        }
    }

    fn charge<E: de::Error>(&self, bytes: usize) -> Result<(), E> {
        let used = self.used.get().saturating_add(bytes);
        self.used.set(used);
        if used > self.limit {
            self.exceeded.set(true);
            return Err(E::custom("the definition is too large once expanded"));
        }
        Ok(())
    }

    /// The error of a failed parse: too large if the budget ran out.
    fn error(&self, syntax: impl FnOnce() -> String) -> DefinitionError {
        if self.exceeded.get() {
            DefinitionError::TooLarge {
                size: self.used.get(),
                limit: self.limit,
            }
        } else {
            DefinitionError::Syntax(syntax())
        }
    }
}

/// Builds a `serde_json::Value` from any self-describing format, charging the
/// budget and refusing duplicate keys.
#[derive(Clone, Copy)]
struct ValueSeed<'b>(&'b Budget);

impl<'de> DeserializeSeed<'de> for ValueSeed<'_> {
    type Value = Value;

    fn deserialize<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for ValueSeed<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a plain value (null, boolean, number, string, list or map; no YAML tags)")
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Value, E> {
        self.0.charge(if v { 4 } else { 5 })?;
        Ok(Value::Bool(v))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Value, E> {
        self.0.charge(1)?;
        Ok(Value::from(v))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Value, E> {
        self.0.charge(1)?;
        Ok(Value::from(v))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Value, E> {
        self.0.charge(1)?;
        Number::from_f64(v)
            .map(Value::Number)
            .ok_or_else(|| E::custom("numbers must be finite (no NaN or infinity)"))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Value, E> {
        self.0.charge(v.len().saturating_add(2))?;
        Ok(Value::String(v.to_owned()))
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<Value, E> {
        self.0.charge(v.len().saturating_add(2))?;
        Ok(Value::String(v))
    }

    fn visit_unit<E: de::Error>(self) -> Result<Value, E> {
        self.0.charge(4)?;
        Ok(Value::Null)
    }

    fn visit_none<E: de::Error>(self) -> Result<Value, E> {
        self.visit_unit()
    }

    fn visit_some<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        self.deserialize(deserializer)
    }

    fn visit_newtype_struct<D: de::Deserializer<'de>>(
        self,
        deserializer: D,
    ) -> Result<Value, D::Error> {
        self.deserialize(deserializer)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        self.0.charge(2)?;
        let mut items = Vec::new();
        while let Some(item) = seq.next_element_seed(self)? {
            if !items.is_empty() {
                self.0.charge(1)?;
            }
            items.push(item);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        self.0.charge(2)?;
        let mut entries = Map::new();
        while let Some(key) = map.next_key_seed(KeySeed)? {
            self.0.charge(key.len().saturating_add(4))?;
            if entries.contains_key(&key) {
                return Err(de::Error::custom(format!("duplicate key '{key}'")));
            }
            let value = map.next_value_seed(self)?;
            entries.insert(key, value);
        }
        Ok(Value::Object(entries))
    }
}

struct KeySeed;

impl<'de> DeserializeSeed<'de> for KeySeed {
    type Value = String;

    fn deserialize<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<String, D::Error> {
        deserializer.deserialize_str(KeySeed)
    }
}

impl Visitor<'_> for KeySeed {
    type Value = String;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a string key")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<String, E> {
        Ok(v.to_owned())
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<String, E> {
        Ok(v)
    }
}
