//! A choice written as a map with exactly one key, which names the choice (a newtype variant of
//! the enum) and holds its settings: writer-election's `discovery` and `state`, the proxy's
//! `topology`. Use it as `#[serde(with = "config_common::one_key")]` on an enum field, or on an
//! `Option` of one (with `default`; a null value is then `None`).
//!
//! `serde_yaml::with::singleton_map` reads the same shape but refuses no key or a second key
//! with only "expected map with a single key"; serde hands the variant names to
//! `deserialize_enum`, so here the refusal says which keys there are:
//! "expected a single key, one of `file`, `lease`, found none".

use std::fmt;

use serde::de::{
    self, DeserializeSeed, Deserializer, EnumAccess, MapAccess, VariantAccess, Visitor,
};

pub fn deserialize<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: de::Deserialize<'de>,
{
    T::deserialize(OneKey(d))
}

struct OneKey<D>(D);

impl<'de, D: Deserializer<'de>> Deserializer<'de> for OneKey<D> {
    type Error = D::Error;

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, D::Error> {
        self.0.deserialize_map(MapVisitor { variants, visitor })
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, D::Error> {
        self.0.deserialize_option(OptionVisitor(visitor))
    }

    fn deserialize_any<V: Visitor<'de>>(self, _visitor: V) -> Result<V::Value, D::Error> {
        Err(de::Error::custom("one_key reads enums only"))
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
        unit unit_struct newtype_struct seq tuple tuple_struct map struct identifier
        ignored_any
    }
}

/// `Option<Enum>`: null is `None`, anything else is read as the one-key map.
struct OptionVisitor<V>(V);

impl<'de, V: Visitor<'de>> Visitor<'de> for OptionVisitor<V> {
    type Value = V::Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.expecting(f)
    }

    fn visit_none<E: de::Error>(self) -> Result<V::Value, E> {
        self.0.visit_none()
    }

    fn visit_unit<E: de::Error>(self) -> Result<V::Value, E> {
        self.0.visit_none()
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<V::Value, D::Error> {
        self.0.visit_some(OneKey(d))
    }
}

/// "a single key, one of `static`, `kubernetes`, `dns`"
fn allowed(variants: &[&str]) -> String {
    let names: Vec<String> = variants.iter().map(|v| format!("`{v}`")).collect();
    format!("a single key, one of {}", names.join(", "))
}

struct MapVisitor<V> {
    variants: &'static [&'static str],
    visitor: V,
}

impl<'de, V: Visitor<'de>> Visitor<'de> for MapVisitor<V> {
    type Value = V::Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "a map with {}", allowed(self.variants))
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<V::Value, A::Error> {
        self.visitor.visit_enum(Entry {
            map,
            variants: self.variants,
        })
    }
}

struct Entry<A> {
    map: A,
    variants: &'static [&'static str],
}

impl<'de, A: MapAccess<'de>> EnumAccess<'de> for Entry<A> {
    type Error = A::Error;
    type Variant = Self;

    fn variant_seed<S: DeserializeSeed<'de>>(
        mut self,
        seed: S,
    ) -> Result<(S::Value, Self), A::Error> {
        match self.map.next_key_seed(seed)? {
            Some(variant) => Ok((variant, self)),
            None => Err(de::Error::custom(format!(
                "expected {}, found none",
                allowed(self.variants)
            ))),
        }
    }
}

impl<'de, A: MapAccess<'de>> VariantAccess<'de> for Entry<A> {
    type Error = A::Error;

    fn newtype_variant_seed<S: DeserializeSeed<'de>>(
        mut self,
        seed: S,
    ) -> Result<S::Value, A::Error> {
        let value = self.map.next_value_seed(seed)?;
        match self.map.next_key::<String>()? {
            None => Ok(value),
            Some(another) => Err(de::Error::custom(format!(
                "expected {}, found `{another}` as well",
                allowed(self.variants)
            ))),
        }
    }

    fn unit_variant(self) -> Result<(), A::Error> {
        Err(de::Error::custom("one_key reads newtype variants only"))
    }

    fn tuple_variant<V: Visitor<'de>>(self, _len: usize, _v: V) -> Result<V::Value, A::Error> {
        Err(de::Error::custom("one_key reads newtype variants only"))
    }

    fn struct_variant<V: Visitor<'de>>(
        self,
        _fields: &'static [&'static str],
        _v: V,
    ) -> Result<V::Value, A::Error> {
        Err(de::Error::custom("one_key reads newtype variants only"))
    }
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;

    use crate::{from_yaml, ConfigError};

    #[derive(Debug, PartialEq, Deserialize)]
    #[serde(rename_all = "snake_case")]
    enum Store {
        File(String),
        Lease(Lease),
    }

    #[derive(Debug, PartialEq, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Lease {
        name: String,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Doc {
        #[serde(with = "crate::one_key")]
        state: Store,
        #[serde(default, with = "crate::one_key")]
        spare: Option<Store>,
    }

    fn parse(yaml: &str) -> Result<Doc, ConfigError> {
        from_yaml(yaml)
    }

    fn err(yaml: &str) -> (String, String) {
        match parse(yaml) {
            Ok(d) => panic!("expected an error, got {d:?}"),
            Err(ConfigError::Invalid { key, reason }) => (key, reason),
            Err(e) => panic!("not an Invalid error: {e}"),
        }
    }

    #[test]
    fn the_one_key_picks_the_variant_and_holds_its_settings() {
        let d = parse("state: { file: s.json }").unwrap();
        assert_eq!(d.state, Store::File("s.json".into()));
        assert_eq!(d.spare, None);
        let d = parse("state: { lease: { name: n } }\nspare: { file: b.json }").unwrap();
        assert_eq!(d.state, Store::Lease(Lease { name: "n".into() }));
        assert_eq!(d.spare, Some(Store::File("b.json".into())));
    }

    #[test]
    fn no_key_is_refused_with_the_keys_there_are() {
        let (key, reason) = err("state: {}");
        assert_eq!(key, "state");
        assert!(
            reason.starts_with("expected a single key, one of `file`, `lease`, found none"),
            "{reason}"
        );
        let (key, reason) = err("state: { file: a }\nspare: {}");
        assert_eq!(key, "spare");
        assert!(reason.contains("found none"), "{reason}");
    }

    #[test]
    fn a_second_key_is_refused_by_name() {
        let (key, reason) = err("state: { file: a.json, lease: { name: n } }");
        assert_eq!(key, "state");
        assert!(
            reason.starts_with(
                "expected a single key, one of `file`, `lease`, found `lease` as well"
            ),
            "{reason}"
        );
    }

    #[test]
    fn an_unknown_key_or_a_bad_setting_is_named_by_its_path() {
        let (key, reason) = err("state: { fil: a.json }");
        assert_eq!(key, "state.fil");
        assert!(
            reason.starts_with("unknown variant `fil`, expected `file` or `lease`"),
            "{reason}"
        );
        let (key, reason) = err("state: { lease: { nme: n } }");
        assert_eq!(key, "state.lease.nme");
        assert!(reason.contains("unknown field `nme`"), "{reason}");
    }

    #[test]
    fn a_value_that_is_not_a_map_says_what_is_expected() {
        let (key, reason) = err("state: s.json");
        assert_eq!(key, "state");
        assert!(
            reason.contains("expected a map with a single key, one of `file`, `lease`"),
            "{reason}"
        );
        let (key, reason) = err("state: { file: a }\nspare: b.json");
        assert_eq!(key, "spare");
        assert!(
            reason.contains("expected a map with a single key"),
            "{reason}"
        );
    }

    #[test]
    fn an_optional_choice_may_be_null_or_left_out() {
        assert_eq!(parse("state: { file: a }\nspare: ~").unwrap().spare, None);
        assert_eq!(parse("state: { file: a }\nspare:").unwrap().spare, None);
        assert_eq!(parse("state: { file: a }").unwrap().spare, None);
    }
}
