//! The pipeline's graph: which component reads from which, and the rules that make a config a
//! runnable DAG (known inputs, no cycles, nothing produced that nobody reads, no idle sinks).

use std::collections::{BTreeMap, BTreeSet};

use crate::config::{Config, FieldError};

/// Checks that `id` can name a component: letters, digits, `_` and `-`, starting with a letter
/// or digit (names starting with `_` are the engine's).
pub fn check_id(id: &str) -> Result<(), String> {
    let mut chars = id.chars();
    let valid = matches!(chars.next(), Some(c) if c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if valid {
        Ok(())
    } else {
        Err(format!(
            "invalid component id {id:?}: use letters, digits, '_' and '-', starting with a letter or digit"
        ))
    }
}

/// The ids that read from `id`, in a stable order.
pub fn consumers<'a>(config: &'a Config, id: &str) -> Vec<&'a str> {
    let transforms = config.transforms.iter().map(|(k, c)| (k, &c.inputs));
    let sinks = config.sinks.iter().map(|(k, c)| (k, &c.inputs));
    transforms
        .chain(sinks)
        .filter(|(_, inputs)| inputs.iter().any(|input| input == id))
        .map(|(k, _)| k.as_str())
        .collect()
}

/// Every graph rule the config breaks.
pub fn check(config: &Config) -> Vec<FieldError> {
    let mut errors = Vec::new();
    if config.sources.is_empty() {
        errors.push(FieldError::new(
            "sources",
            "the pipeline has no sources: add at least one [sources.ID]",
        ));
    }

    // Ids are shared by all kinds, since `inputs` names them without a kind.
    let mut kinds: BTreeMap<&str, &str> = BTreeMap::new();
    for (kind, ids) in [
        ("sources", config.sources.keys().collect::<Vec<_>>()),
        ("transforms", config.transforms.keys().collect()),
        ("sinks", config.sinks.keys().collect()),
    ] {
        for id in ids {
            if let Some(other) = kinds.insert(id, kind) {
                errors.push(FieldError::new(
                    format!("{kind}.{id}"),
                    format!("the id {id:?} is already used by {other}.{id}: ids must be unique across sources, transforms and sinks"),
                ));
            }
        }
    }

    let quarantine_sink = config.quarantine.sink.as_deref();
    let readers = config
        .transforms
        .iter()
        .map(|(id, c)| ("transforms", id, &c.inputs))
        .chain(config.sinks.iter().map(|(id, c)| ("sinks", id, &c.inputs)));
    for (kind, id, inputs) in readers {
        if inputs.is_empty() && !(kind == "sinks" && quarantine_sink == Some(id.as_str())) {
            errors.push(FieldError::new(
                format!("{kind}.{id}.inputs"),
                "missing or empty: name the sources or transforms this reads from",
            ));
        }
        let mut seen = BTreeSet::new();
        for (i, input) in inputs.iter().enumerate() {
            let path = format!("{kind}.{id}.inputs[{i}]");
            if !seen.insert(input) {
                errors.push(FieldError::new(path, format!("{input:?} is listed twice")));
                continue;
            }
            match kinds.get(input.as_str()) {
                Some(&"sinks") => errors.push(FieldError::new(
                    path,
                    format!("{input:?} is a sink, and sinks have no output to read"),
                )),
                Some(_) => {}
                None => errors.push(FieldError::new(
                    path,
                    format!("unknown input {input:?}: no source or transform has this id"),
                )),
            }
        }
    }

    for (kind, ids) in [
        ("sources", config.sources.keys().collect::<Vec<_>>()),
        ("transforms", config.transforms.keys().collect()),
    ] {
        for id in ids {
            if consumers(config, id).is_empty() {
                errors.push(FieldError::new(
                    format!("{kind}.{id}"),
                    "nothing reads from this component: list it in a transform's or sink's `inputs`, or remove it",
                ));
            }
        }
    }

    errors.extend(cycles(config));
    errors
}

/// Reports each cycle among transforms once, as the path that closes it.
fn cycles(config: &Config) -> Vec<FieldError> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        Visiting,
        Done,
    }
    fn visit<'a>(
        config: &'a Config,
        id: &'a str,
        marks: &mut BTreeMap<&'a str, Mark>,
        stack: &mut Vec<&'a str>,
        errors: &mut Vec<FieldError>,
    ) {
        match marks.get(id) {
            Some(Mark::Done) => return,
            Some(Mark::Visiting) => {
                let start = stack.iter().position(|s| *s == id).unwrap_or(0);
                // The stack follows `inputs` upstream; reversed, it is the way events flow.
                let mut path: Vec<&str> = stack[start..].to_vec();
                path.push(id);
                path.reverse();
                errors.push(FieldError::new(
                    format!("transforms.{}.inputs", stack[stack.len() - 1]),
                    format!(
                        "cycle: events would flow {} (a pipeline must be acyclic)",
                        path.join(" -> ")
                    ),
                ));
                return;
            }
            None => {}
        }
        let Some(transform) = config.transforms.get(id) else {
            return;
        };
        marks.insert(id, Mark::Visiting);
        stack.push(id);
        for input in &transform.inputs {
            visit(config, input, marks, stack, errors);
        }
        stack.pop();
        marks.insert(id, Mark::Done);
    }

    let mut marks = BTreeMap::new();
    let mut errors = Vec::new();
    for id in config.transforms.keys() {
        visit(config, id, &mut marks, &mut Vec::new(), &mut errors);
    }
    errors
}
