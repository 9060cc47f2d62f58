//! Adapters written the way PEFT saves them, against the tiny dummy models' configs: what is
//! served is read with the right scaling and split; each unsupported or broken case is
//! refused naming its field or tensor.

use super::*;
use crate::dummy::{write_dummy_model, DummySize, DummySpec};
use crate::Architecture;
use safetensors::tensor::{Dtype, TensorView};
use serde_json::json;

type TestResult<T = ()> = std::result::Result<T, Box<dyn std::error::Error>>;

fn base(arch: Architecture) -> TestResult<DecoderConfig> {
    let dir = tempfile::tempdir()?;
    let spec = DummySpec {
        architecture: arch,
        size: DummySize::Tiny,
        seed: 3,
    };
    write_dummy_model(spec, dir.path())?;
    Ok(DecoderConfig::from_hf_json(
        &dir.path().join("config.json"),
    )?)
}

/// Writes an adapter with `modules` (name, (out, in)) in every layer, `rank` rows, values
/// from their position; `config` overrides fields of a plain LoRA config.
fn write_adapter(
    dir: &Path,
    layers: usize,
    rank: usize,
    modules: &[(&str, (usize, usize))],
    config: Value,
) -> TestResult {
    let mut json = json!({
        "peft_type": "LORA", "r": rank, "lora_alpha": 16, "bias": "none",
        "target_modules": modules.iter().map(|(m, _)| m).collect::<Vec<_>>(),
        "base_model_name_or_path": "dummy", "fan_in_fan_out": false, "use_dora": false,
    });
    if let (Some(json), Value::Object(changes)) = (json.as_object_mut(), config) {
        json.extend(changes);
    }
    std::fs::write(dir.join(CONFIG_FILE), json.to_string())?;
    let mut tensors: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
    for layer in 0..layers {
        for (module, (out, inp)) in modules {
            let block = if module.contains("proj")
                && ["gate", "up", "down"].iter().any(|p| module.starts_with(p))
            {
                "mlp"
            } else {
                "self_attn"
            };
            let prefix = format!("base_model.model.model.layers.{layer}.{block}.{module}");
            for (which, shape) in [("A", vec![rank, *inp]), ("B", vec![*out, rank])] {
                let count: usize = shape.iter().product();
                let bytes = (0..count)
                    .flat_map(|i| ((i % 7) as f32 * 0.01 - 0.03).to_le_bytes())
                    .collect();
                tensors.push((format!("{prefix}.lora_{which}.weight"), shape, bytes));
            }
        }
    }
    let views: Vec<(String, TensorView<'_>)> = tensors
        .iter()
        .map(|(name, shape, bytes)| {
            Ok((
                name.clone(),
                TensorView::new(Dtype::F32, shape.clone(), bytes)?,
            ))
        })
        .collect::<std::result::Result<_, safetensors::SafeTensorError>>()?;
    safetensors::tensor::serialize_to_file(views, None, &dir.join(WEIGHTS_FILE))?;
    Ok(())
}

fn all_seven(c: &DecoderConfig) -> Vec<(&'static str, (usize, usize))> {
    let (q, kv, h, i) = (
        c.num_heads * c.head_dim,
        c.num_kv_heads * c.head_dim,
        c.hidden_size,
        c.intermediate_size,
    );
    vec![
        ("q_proj", (q, h)),
        ("k_proj", (kv, h)),
        ("v_proj", (kv, h)),
        ("o_proj", (h, q)),
        ("gate_proj", (i, h)),
        ("up_proj", (i, h)),
        ("down_proj", (h, i)),
    ]
}

#[test]
fn an_adapter_on_all_seven_projections_is_read_with_its_scaling() -> TestResult {
    let c = base(Architecture::Llama)?;
    let dir = tempfile::tempdir()?;
    write_adapter(dir.path(), c.num_layers, 8, &all_seven(&c), json!({}))?;
    let adapter = load_adapter(dir.path(), &c, 64)?;
    assert_eq!(adapter.rank, 8);
    assert_eq!(adapter.scaling, 2.0);
    assert_eq!(adapter.deltas.len(), 7 * c.num_layers);
    let down = &adapter.deltas[&(1, Projection::Down)];
    assert_eq!(
        (down.out_features, down.in_features),
        (c.hidden_size, c.intermediate_size)
    );
    // rsLoRA: alpha / sqrt(r).
    let rs = tempfile::tempdir()?;
    let qv = [all_seven(&c)[0], all_seven(&c)[2]];
    write_adapter(rs.path(), c.num_layers, 4, &qv, json!({"use_rslora": true}))?;
    let adapter = load_adapter(rs.path(), &c, 64)?;
    assert_eq!(adapter.scaling, 8.0);
    assert_eq!(adapter.deltas.len(), 2 * c.num_layers);
    Ok(())
}

#[test]
fn fused_projections_are_split_by_rows_of_b() -> TestResult {
    let c = base(Architecture::Phi3)?;
    let (q, kv, h, i) = (
        c.num_heads * c.head_dim,
        c.num_kv_heads * c.head_dim,
        c.hidden_size,
        c.intermediate_size,
    );
    let dir = tempfile::tempdir()?;
    let fused = [("qkv_proj", (q + 2 * kv, h)), ("gate_up_proj", (2 * i, h))];
    write_adapter(dir.path(), c.num_layers, 4, &fused, json!({}))?;
    let adapter = load_adapter(dir.path(), &c, 64)?;
    let key = &adapter.deltas[&(0, Projection::Key)];
    let value = &adapter.deltas[&(0, Projection::Value)];
    assert_eq!((key.out_features, value.out_features), (kv, kv));
    assert_eq!(adapter.deltas[&(0, Projection::Up)].out_features, i);
    // Rows continue where the previous projection's end: K's first row is B's row q.
    let b_row = |row: usize| -> Vec<f32> {
        (row * 4..row * 4 + 4)
            .map(|i| (i % 7) as f32 * 0.01 - 0.03)
            .collect()
    };
    assert_eq!(&key.b[..4], b_row(q).as_slice());
    assert_eq!(&value.b[..4], b_row(q + kv).as_slice());
    Ok(())
}

#[test]
fn what_is_not_served_is_refused_naming_the_field() -> TestResult {
    let c = base(Architecture::Llama)?;
    let modules = &all_seven(&c)[..1];
    let cases = [
        (json!({"use_dora": true}), "use_dora"),
        (json!({"fan_in_fan_out": true}), "fan_in_fan_out"),
        (json!({"bias": "all"}), "bias"),
        (json!({"modules_to_save": ["lm_head"]}), "modules_to_save"),
        (json!({"rank_pattern": {"q_proj": 16}}), "rank_pattern"),
        (
            json!({"target_modules": ["embed_tokens"]}),
            "embedding and head",
        ),
        (
            json!({"target_modules": ["q_proj", "mlp.c_fc"]}),
            "unknown module `mlp.c_fc`",
        ),
        (json!({"target_modules": ".*proj"}), "regular expression"),
        (json!({"peft_type": "IA3"}), "peft_type"),
        (json!({"r": 0}), "`r`"),
    ];
    for (change, needle) in cases {
        let dir = tempfile::tempdir()?;
        write_adapter(dir.path(), 1, 4, modules, change.clone())?;
        let message = load_adapter(dir.path(), &c, 64)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(message.contains(needle), "{change}: {message}");
    }
    Ok(())
}

#[test]
fn broken_weights_are_refused_naming_the_tensor() -> TestResult {
    let c = base(Architecture::Llama)?;
    let (q, h) = (c.num_heads * c.head_dim, c.hidden_size);
    let refused = |modules: &[(&str, (usize, usize))],
                   rank: usize,
                   layers: usize,
                   max_rank: usize|
     -> TestResult<String> {
        let dir = tempfile::tempdir()?;
        write_adapter(dir.path(), layers, rank, modules, json!({}))?;
        Ok(load_adapter(dir.path(), &c, max_rank)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default())
    };
    let wrong_shape = refused(&[("q_proj", (q + 1, h))], 4, 1, 64)?;
    assert!(wrong_shape.contains("the base model's is"), "{wrong_shape}");
    let too_many_layers = refused(&[("q_proj", (q, h))], 4, c.num_layers + 1, 64)?;
    assert!(too_many_layers.contains("layers"), "{too_many_layers}");
    let over_rank = refused(&[("q_proj", (q, h))], 32, 1, 16)?;
    assert!(
        over_rank.contains("above --max-lora-rank (16)"),
        "{over_rank}"
    );
    // A rank of 256 is served.
    assert_eq!(refused(&[("q_proj", (q, h))], 256, 1, 256)?, "");
    // Missing files name their path.
    let empty = tempfile::tempdir()?;
    let missing = load_adapter(empty.path(), &c, 64)
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(missing.contains(CONFIG_FILE), "{missing}");
    Ok(())
}

#[test]
fn peft_keys_parse_with_and_without_the_adapter_name() {
    assert_eq!(
        parse_key("base_model.model.model.layers.3.self_attn.q_proj.lora_A.weight"),
        Some((3, "q_proj", 'A'))
    );
    assert_eq!(
        parse_key("base_model.model.model.layers.0.mlp.down_proj.lora_B.default.weight"),
        Some((0, "down_proj", 'B'))
    );
    assert_eq!(parse_key("base_model.model.lm_head.lora_A.weight"), None);
    assert_eq!(
        parse_key("base_model.model.model.layers.x.self_attn.q_proj.lora_A.weight"),
        None
    );
}
