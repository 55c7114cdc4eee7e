//! Form actions that processors declare themselves: a form's `actions` object maps an action's
//! name to its settings (`"actions": {"journal": {"answers": ["name"]}}`); the processor that owns
//! the action gives its JSON shape and its save-time check ([`Action`]); the gateway checks a
//! form's actions through the registry ([`FormActions`]) that the binary fills from the
//! registered processors, so adding one edits no gateway code.
//!
//! Invariant: a saved form version holds only actions some registered processor owns, each with
//! settings its check accepted; problems point at `/actions/<name>/...` (RFC 6901).

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use formstream_schemas::FormVersion;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use crate::forms::FormBody;
use crate::problem::FieldProblem;

/// An action a processor owns: its name (the key in a form's `actions`) and its check.
pub trait FormAction: Send + Sync + 'static {
    fn name(&self) -> &'static str;

    /// Problems of `settings` in the form `body` (its questions, its other fields), with
    /// pointers relative to the action (`""` for the whole, `/answers/0`); none when it is valid.
    fn check(&self, settings: &Value, body: &FormBody) -> Vec<FieldProblem>;
}

/// A typed action: its settings are a `T` (the JSON shape; `#[serde(deny_unknown_fields)]`
/// refuses what it does not know), then `check` looks at them with the form.
pub struct Action<T> {
    name: &'static str,
    check: fn(&T, &FormBody) -> Vec<FieldProblem>,
}

impl<T> Action<T> {
    pub const fn new(name: &'static str, check: fn(&T, &FormBody) -> Vec<FieldProblem>) -> Self {
        Action { name, check }
    }
}

impl<T: DeserializeOwned + 'static> FormAction for Action<T> {
    fn name(&self) -> &'static str {
        self.name
    }

    fn check(&self, settings: &Value, body: &FormBody) -> Vec<FieldProblem> {
        match serde_path_to_error::deserialize::<_, T>(settings) {
            Ok(settings) => (self.check)(&settings, body),
            Err(error) => vec![FieldProblem::new(
                pointer(error.path()),
                "invalid_action",
                error.into_inner().to_string(),
            )],
        }
    }
}

/// A serde path (`answers[0]`) as a JSON pointer (`/answers/0`).
fn pointer(path: &serde_path_to_error::Path) -> String {
    use serde_path_to_error::Segment;
    let mut pointer = String::new();
    for segment in path.iter() {
        match segment {
            Segment::Seq { index } => pointer.push_str(&format!("/{index}")),
            Segment::Map { key } | Segment::Enum { variant: key } => {
                pointer.push('/');
                pointer.push_str(&key.replace('~', "~0").replace('/', "~1"));
            }
            Segment::Unknown => {}
        }
    }
    pointer
}

/// The settings of action `name` in a stored form version, if it has that action and they read
/// as a `T` (the gateway checked them when the form was saved).
pub fn settings<T: DeserializeOwned>(version: &FormVersion, name: &str) -> Option<T> {
    if version.actions_json == "{}" {
        return None; // most forms: no JSON to parse per record
    }
    let mut actions: Map<String, Value> = serde_json::from_str(&version.actions_json).ok()?;
    serde_json::from_value(actions.remove(name)?).ok()
}

/// Every registered processor's action, by name.
#[derive(Clone, Default)]
pub struct FormActions {
    actions: Arc<BTreeMap<&'static str, Arc<dyn FormAction>>>,
}

impl FormActions {
    pub fn new(actions: impl IntoIterator<Item = Arc<dyn FormAction>>) -> Self {
        let actions = actions.into_iter().map(|a| (a.name(), a)).collect();
        FormActions {
            actions: Arc::new(actions),
        }
    }

    /// Problems of `body`'s `actions`: an action no processor owns, or settings its owner's check
    /// refuses; pointers from the body's root (`/actions/journal/answers/0`).
    pub fn check(&self, body: &FormBody) -> Vec<FieldProblem> {
        let mut problems = Vec::new();
        for (name, settings) in &body.actions {
            let at = format!("/actions/{}", name.replace('~', "~0").replace('/', "~1"));
            let Some(action) = self.actions.get(name.as_str()) else {
                let known: Vec<&str> = self.actions.keys().copied().collect();
                problems.push(FieldProblem::new(
                    at,
                    "unknown_action",
                    format!("no processor has an action {name:?}; known: {known:?}"),
                ));
                continue;
            };
            for mut problem in action.check(settings, body) {
                problem.pointer = format!("{at}{}", problem.pointer);
                problems.push(problem);
            }
        }
        problems
    }
}

impl fmt::Debug for FormActions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.actions.keys()).finish()
    }
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;
    use serde_json::json;

    use super::*;

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Echo {
        answers: Vec<String>,
    }

    fn check_echo(echo: &Echo, body: &FormBody) -> Vec<FieldProblem> {
        let keys: Vec<&str> = body.questions.iter().map(|q| q.key.as_str()).collect();
        (echo.answers.iter().enumerate())
            .filter(|(_, key)| !keys.contains(&key.as_str()))
            .map(|(i, key)| {
                FieldProblem::new(format!("/answers/{i}"), "unknown_question", key.clone())
            })
            .collect()
    }

    fn body(actions: Value) -> FormBody {
        serde_json::from_value(json!({
            "title": "t",
            "questions": [{"key": "name", "text": "Name", "type": "text"}],
            "actions": actions,
        }))
        .expect("a form body")
    }

    fn pointers(problems: Vec<FieldProblem>) -> Vec<(String, &'static str)> {
        problems.into_iter().map(|p| (p.pointer, p.code)).collect()
    }

    #[test]
    fn actions_are_checked_by_their_owner_and_unknown_ones_are_refused() {
        let actions =
            FormActions::new([Arc::new(Action::new("echo", check_echo)) as Arc<dyn FormAction>]);
        assert!(
            actions
                .check(&body(json!({"echo": {"answers": ["name"]}})))
                .is_empty()
        );
        assert_eq!(
            pointers(actions.check(&body(json!({"echo": {"answers": ["name", "age"]}})))),
            [("/actions/echo/answers/1".to_owned(), "unknown_question")]
        );
        assert_eq!(
            pointers(actions.check(&body(json!({"echo": {"answers": [3]}})))),
            [("/actions/echo/answers/0".to_owned(), "invalid_action")]
        );
        assert_eq!(
            pointers(actions.check(&body(json!({"echo": {"answer": []}})))),
            [("/actions/echo/answer".to_owned(), "invalid_action")]
        );
        assert_eq!(
            pointers(actions.check(&body(json!({"mail/x": {}})))),
            [("/actions/mail~1x".to_owned(), "unknown_action")]
        );
    }

    #[test]
    fn a_stored_version_gives_an_action_its_settings() {
        let mut version =
            crate::forms::build_version(&body(json!({"echo": {"answers": ["name"]}})), 1, 0)
                .expect("a valid form");
        let echo: Echo = settings(&version, "echo").expect("the echo settings");
        assert_eq!(echo.answers, ["name"]);
        assert!(settings::<Echo>(&version, "other").is_none());
        version.actions_json = "{}".into();
        assert!(settings::<Echo>(&version, "echo").is_none());
    }
}
