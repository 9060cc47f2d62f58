//! JSON schemas that constrain a model's output (tool parameters, OpenAI `response_format`,
//! TGI `grammar`), prepared once, the same way on every API, before llguidance compiles them.
//!
//! Objects are closed: an object schema that lists its `properties` and says nothing about
//! other keys gets `additionalProperties: false`. JSON Schema allows any other key by default,
//! and under a grammar that lets a random or weak model open an undeclared key after the
//! declared ones and never close it, so a forced tool call runs out of tokens instead of
//! ending. vLLM compiles schemas the same way (xgrammar's strict mode) and OpenAI's strict
//! mode requires it. A schema that wants extra keys says so with its own
//! `additionalProperties` (`true` or a schema), which is kept.

use serde_json::{json, Map, Value};

/// Whitespace between JSON tokens under a grammar.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Whitespace {
    /// None: a model cannot spend its tokens on spaces.
    Compact,
    /// Whatever JSON allows.
    Flexible,
}

/// `schema` ready for llguidance: objects closed (see the module doc) and llguidance's
/// whitespace option set unless the schema sets its own (`x-guidance`). A schema that is not a
/// JSON object (`true`, a missing one) is left as it is.
pub fn prepare_output_schema(schema: &Value, whitespace: Whitespace) -> Value {
    let mut schema = schema.clone();
    close_objects(&mut schema);
    if let Some(object) = schema.as_object_mut() {
        object
            .entry("x-guidance")
            .or_insert_with(|| json!({"whitespace_flexible": whitespace == Whitespace::Flexible}));
    }
    schema
}

/// Keywords whose presence means the schema already decides about keys it does not list.
const DECIDES_OTHER_KEYS: [&str; 3] = [
    "additionalProperties",
    "patternProperties",
    "unevaluatedProperties",
];

/// Keywords that combine this level with other schemas: closing it here could refuse keys the
/// other schemas declare, so such a level is left open.
const COMBINES: [&str; 4] = ["allOf", "anyOf", "oneOf", "$ref"];

fn close_objects(schema: &mut Value) {
    let Value::Object(object) = schema else {
        return;
    };
    let declares_properties = object.get("properties").is_some_and(Value::is_object);
    let decided = DECIDES_OTHER_KEYS.iter().any(|k| object.contains_key(*k));
    let combined = COMBINES.iter().any(|k| object.contains_key(*k));
    if declares_properties && !decided && !combined {
        object.insert("additionalProperties".into(), Value::Bool(false));
    }
    for_each_subschema(object, close_objects);
}

/// Calls `visit` on the schemas nested in `object` that describe values of the output:
/// properties, array items, definitions, the branches of `anyOf`/`oneOf` (each a whole schema
/// on its own) and a schema given as `additionalProperties`. `allOf` branches are not visited:
/// they describe one object together, and closing each would refuse the others' keys.
fn for_each_subschema(object: &mut Map<String, Value>, visit: fn(&mut Value)) {
    for keyword in ["properties", "$defs", "definitions"] {
        if let Some(Value::Object(named)) = object.get_mut(keyword) {
            named.values_mut().for_each(visit);
        }
    }
    for keyword in [
        "items",
        "prefixItems",
        "anyOf",
        "oneOf",
        "additionalProperties",
    ] {
        match object.get_mut(keyword) {
            Some(Value::Array(list)) => list.iter_mut().for_each(visit),
            Some(one @ Value::Object(_)) => visit(one),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn closed(schema: Value) -> Value {
        let mut prepared = prepare_output_schema(&schema, Whitespace::Compact);
        if let Some(object) = prepared.as_object_mut() {
            object.remove("x-guidance");
        }
        prepared
    }

    #[test]
    fn objects_with_properties_are_closed_at_every_depth() {
        let schema = json!({
            "type": "object",
            "properties": {
                "city": {"type": "string"},
                "where": {"type": "object", "properties": {"lat": {"type": "number"}}},
                "list": {"type": "array", "items": {"type": "object", "properties": {"a": {}}}},
                "pair": {"type": "array", "prefixItems": [{"type": "object", "properties": {"b": {}}}]},
                "either": {"anyOf": [{"type": "object", "properties": {"c": {}}}, {"type": "null"}]}
            },
            "$defs": {"d": {"type": "object", "properties": {"e": {}}}},
            "definitions": {"f": {"type": "object", "properties": {"g": {}}}}
        });
        let out = closed(schema);
        let f = Value::Bool(false);
        assert_eq!(out["additionalProperties"], f);
        assert_eq!(out["properties"]["where"]["additionalProperties"], f);
        assert_eq!(
            out["properties"]["list"]["items"]["additionalProperties"],
            f
        );
        assert_eq!(
            out["properties"]["pair"]["prefixItems"][0]["additionalProperties"],
            f
        );
        assert_eq!(
            out["properties"]["either"]["anyOf"][0]["additionalProperties"],
            f
        );
        assert_eq!(out["$defs"]["d"]["additionalProperties"], f);
        assert_eq!(out["definitions"]["f"]["additionalProperties"], f);
        // Leaves that declare no properties are untouched.
        assert_eq!(out["properties"]["city"], json!({"type": "string"}));
    }

    #[test]
    fn a_schema_that_decides_about_other_keys_or_combines_is_kept() {
        for keep in [
            json!({"type": "object", "properties": {"a": {}}, "additionalProperties": true}),
            json!({"type": "object", "properties": {"a": {}}, "additionalProperties": {"type": "integer"}}),
            json!({"type": "object", "properties": {"a": {}}, "patternProperties": {"^x": {}}}),
            json!({"type": "object", "properties": {"a": {}}, "unevaluatedProperties": false}),
            json!({"type": "object", "properties": {"a": {}}, "allOf": [{"properties": {"b": {}}}]}),
            json!({"type": "object", "properties": {"a": {}}, "$ref": "#/$defs/x"}),
            json!({"type": "object"}),
            json!({}),
            json!(true),
        ] {
            assert_eq!(closed(keep.clone()), keep);
        }
        // allOf branches describe one object together: none is closed.
        let all_of = json!({"allOf": [{"properties": {"a": {}}}, {"properties": {"b": {}}}]});
        assert_eq!(closed(all_of.clone()), all_of);
    }

    #[test]
    fn whitespace_is_set_unless_the_schema_chose() {
        let flexible = prepare_output_schema(&json!({"type": "object"}), Whitespace::Flexible);
        assert_eq!(flexible["x-guidance"], json!({"whitespace_flexible": true}));
        let own = json!({"type": "object", "x-guidance": {"whitespace_flexible": true}});
        assert_eq!(prepare_output_schema(&own, Whitespace::Compact), own);
    }
}
