//! Settings parsing: sizes, adapters and their validation.

use super::*;

#[test]
fn lora_adapters_parse_as_pairs_or_hub_ids() {
    let parsed = parse_lora_adapters("tone=/adapters/tone, org/sql ,").ok();
    assert_eq!(
        parsed,
        Some(vec![
            ("tone".to_string(), "/adapters/tone".to_string()),
            ("org/sql".to_string(), "org/sql".to_string()),
        ])
    );
    assert!(parse_lora_adapters("a=/x,a=/y").is_err());
    assert!(parse_lora_adapters("=/x").is_err());
}

#[test]
fn sizes_parse_with_units() {
    assert_eq!(parse_bytes("2G"), Ok(2_000_000_000));
    assert_eq!(parse_bytes("512Mi"), Ok(512 << 20));
    assert_eq!(parse_bytes("1000"), Ok(1000));
    assert!(parse_bytes("lots").is_err());
}
