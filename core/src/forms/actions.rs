//! Form actions that processors declare themselves: a form's `actions` object maps an action's
//! name to its settings (`"actions": {"journal": {"answers": ["name"]}}`); the processor that owns
//! the action gives its JSON shape and its save-time check ([`Action`]); the gateway builds a
//! form version through the registry ([`FormActions::build_version`]) that the binary fills from
//! the registered processors, so adding one edits no gateway code.
//!
//! The actions the public JSON had before `actions` existed (`receipt`, ...) are top-level fields
//! of a form ([`FormBody::fields`]) and typed fields of the wire record; their processors own them
//! the same way ([`Action::field`]: the check, plus filling the record's field and showing it).
//!
//! Invariant: a saved form version holds only actions some registered processor owns, each with
//! settings its check accepted; problems point at `/actions/<name>/...` or `/<field>/...` (RFC
//! 6901); a top-level field of the wrong JSON shape is refused alone, as `invalid_shape`, the
//! answer a body of the wrong shape gets.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use formstream_schemas::{Form, FormVersion};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use crate::forms::build::draft_version;
use crate::forms::{FormBody, FormView};
use crate::problem::FieldProblem;

/// An action a processor owns: its name (the key in a form's `actions`, or the top-level field it
/// is), its JSON shape and its check, and for a top-level field how it is stored and shown.
pub trait FormAction: Send + Sync + 'static {
    fn name(&self) -> &'static str;

    /// Whether its settings are the top-level form field [`Self::name`] (typed in the wire
    /// record) rather than an entry of `actions`.
    fn is_field(&self) -> bool {
        false
    }

    /// Where and why `settings` do not read as the action's type: (pointer relative to the
    /// action, serde's message); `None` when they do.
    fn shape(&self, settings: &Value) -> Option<(String, String)>;

    /// Problems of `settings` (of a good shape) in the form `body` (its questions, its other
    /// fields), with pointers relative to the action (`""` for the whole, `/answers/0`); none when
    /// it is valid.
    fn check(&self, settings: &Value, body: &FormBody) -> Vec<FieldProblem>;

    /// Problems of `settings` (of a good shape) that only the version the form builds shows (its
    /// questions as stored, every field's action built): run after every field's check and
    /// build, in the same field order; pointers as [`Self::check`]'s. Most actions have none.
    fn check_built(&self, _settings: &Value, _version: &FormVersion) -> Vec<FieldProblem> {
        Vec::new()
    }

    /// Stores checked `settings` in `version` (a top-level field's typed field of the record).
    fn build(&self, _settings: &Value, _version: &mut FormVersion) {}

    /// The settings as the API shows them for a stored `version` (a top-level field's), if any.
    fn show(&self, _version: &FormVersion) -> Option<Value> {
        None
    }
}

/// A typed action: its settings are a `T` (the JSON shape; `#[serde(deny_unknown_fields)]`
/// refuses what it does not know), then `check` looks at them with the form.
pub struct Action<T> {
    name: &'static str,
    check: fn(&T, &FormBody) -> Vec<FieldProblem>,
    check_built: Option<fn(&T, &FormVersion) -> Vec<FieldProblem>>,
    field: Option<Field<T>>,
}

/// How a top-level field's action is kept in the wire record's typed field.
struct Field<T> {
    build: fn(T, &mut FormVersion),
    show: fn(&FormVersion) -> Option<T>,
    json: fn(T) -> Option<Value>,
}

fn to_json<T: Serialize>(settings: T) -> Option<Value> {
    serde_json::to_value(settings).ok()
}

impl<T> Action<T> {
    /// An action under a form's `actions`, kept as its JSON in the record (`actions_json`).
    pub const fn new(name: &'static str, check: fn(&T, &FormBody) -> Vec<FieldProblem>) -> Self {
        Action {
            name,
            check,
            check_built: None,
            field: None,
        }
    }

    /// An action that is the top-level form field `name`, kept in a typed field of the record:
    /// `build` stores checked settings there and `show` reads them back for the API (what it shows
    /// must build the same record again: a client can `PUT` back what it fetched).
    pub const fn field(
        name: &'static str,
        check: fn(&T, &FormBody) -> Vec<FieldProblem>,
        build: fn(T, &mut FormVersion),
        show: fn(&FormVersion) -> Option<T>,
    ) -> Self
    where
        T: Serialize,
    {
        let json = to_json::<T>;
        Action {
            name,
            check,
            check_built: None,
            field: Some(Field { build, show, json }),
        }
    }

    /// The action with a check of the version the form builds ([`FormAction::check_built`]).
    pub const fn with_check_built(self, check: fn(&T, &FormVersion) -> Vec<FieldProblem>) -> Self {
        Action {
            check_built: Some(check),
            ..self
        }
    }
}

impl<T: DeserializeOwned + 'static> FormAction for Action<T> {
    fn name(&self) -> &'static str {
        self.name
    }

    fn is_field(&self) -> bool {
        self.field.is_some()
    }

    fn shape(&self, settings: &Value) -> Option<(String, String)> {
        let error = serde_path_to_error::deserialize::<_, T>(settings).err()?;
        Some((pointer(error.path()), error.into_inner().to_string()))
    }

    fn check(&self, settings: &Value, body: &FormBody) -> Vec<FieldProblem> {
        match serde_json::from_value::<T>(settings.clone()) {
            Ok(settings) => (self.check)(&settings, body),
            Err(_) => Vec::new(), // its shape problem is reported by the caller
        }
    }

    fn check_built(&self, settings: &Value, version: &FormVersion) -> Vec<FieldProblem> {
        match (self.check_built, T::deserialize(settings)) {
            (Some(check), Ok(settings)) => check(&settings, version),
            _ => Vec::new(),
        }
    }

    fn build(&self, settings: &Value, version: &mut FormVersion) {
        if let (Some(field), Ok(settings)) = (&self.field, T::deserialize(settings)) {
            (field.build)(settings, version);
        }
    }

    fn show(&self, version: &FormVersion) -> Option<Value> {
        let field = self.field.as_ref()?;
        (field.json)((field.show)(version)?)
    }
}

/// `problems` of the top-level field `name`, their pointers from the body's root.
fn under(name: &str, problems: Vec<FieldProblem>) -> impl Iterator<Item = FieldProblem> + '_ {
    problems.into_iter().map(move |mut problem| {
        problem.pointer = format!("/{name}{}", problem.pointer);
        problem
    })
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

    /// Checks a form body and, when it is valid, builds version `version` of the form: the form's
    /// own checks, then each top-level action field's (in [`FormBody::fields`] order), then their
    /// checks of the built version ([`FormAction::check_built`]: the rules' compile), then the
    /// `actions`. Every problem is reported, not just the first, except a field
    /// of the wrong JSON shape: that one alone, as the gateway answers any body of a wrong shape.
    pub fn build_version(
        &self,
        body: &FormBody,
        version: i32,
        now: i64,
    ) -> Result<FormVersion, Vec<FieldProblem>> {
        for (name, settings) in body.fields() {
            if let Some(action) = self.field(name)
                && let Some((pointer, message)) = action.shape(settings)
            {
                let at = format!("/{name}{pointer}");
                return Err(vec![FieldProblem::new(at, "invalid_shape", message)]);
            }
        }
        let (mut built, mut problems) = draft_version(body, version, now);
        for (name, settings) in body.fields() {
            let Some(action) = self.field(name) else {
                problems.push(FieldProblem::new(
                    format!("/{name}"),
                    "unknown_action",
                    format!("no registered processor owns the {name:?} action"),
                ));
                continue;
            };
            let found = action.check(settings, body);
            if found.is_empty() {
                action.build(settings, &mut built);
            }
            problems.extend(under(name, found));
        }
        for (name, settings) in body.fields() {
            if let Some(action) = self.field(name) {
                problems.extend(under(name, action.check_built(settings, &built)));
            }
        }
        problems.extend(self.check(body));
        if problems.is_empty() {
            Ok(built)
        } else {
            Err(problems)
        }
    }

    /// The top-level fields of `version` as the API shows them, by name (what their owners show).
    pub fn show(&self, version: &FormVersion) -> Map<String, Value> {
        (self.actions.values())
            .filter(|action| action.is_field())
            .filter_map(|action| Some((action.name().to_owned(), action.show(version)?)))
            .collect()
    }

    /// What `GET` shows of `version` (of a form of it alone), as a body without the form's id,
    /// organisation, version number and times, and the version that body builds again. A client
    /// can `PUT` back what it fetched, so the rebuilt version must equal `version`: each action's
    /// `show` gives what its `build` stored (its tests check it with this).
    pub fn shown_and_rebuilt(
        &self,
        version: &FormVersion,
    ) -> (Value, Result<FormVersion, Vec<FieldProblem>>) {
        let form = Form {
            id: "f".into(),
            organisation: "o".into(),
            created_at: 0,
            versions: vec![version.clone()],
        };
        let mut shown = serde_json::to_value(FormView::of(&form, version, self))
            .unwrap_or_else(|_| Value::Object(Map::new()));
        if let Some(shown) = shown.as_object_mut() {
            for field in ["id", "organisation", "version", "created_at", "updated_at"] {
                shown.remove(field);
            }
        }
        let rebuilt = match serde_json::from_value::<FormBody>(shown.clone()) {
            Ok(body) => self.build_version(&body, version.version, version.created_at),
            Err(e) => Err(vec![FieldProblem::new("", "invalid_shape", e.to_string())]),
        };
        (shown, rebuilt)
    }

    fn field(&self, name: &str) -> Option<&Arc<dyn FormAction>> {
        self.actions.get(name).filter(|action| action.is_field())
    }

    /// Problems of `body`'s `actions`: an action no processor owns, or settings its owner's check
    /// refuses; pointers from the body's root (`/actions/journal/answers/0`).
    pub fn check(&self, body: &FormBody) -> Vec<FieldProblem> {
        let mut problems = Vec::new();
        for (name, settings) in &body.actions {
            let at = format!("/actions/{}", name.replace('~', "~0").replace('/', "~1"));
            let Some(action) = self.actions.get(name.as_str()).filter(|a| !a.is_field()) else {
                let known: Vec<&str> = (self.actions.values())
                    .filter(|a| !a.is_field())
                    .map(|a| a.name())
                    .collect();
                problems.push(FieldProblem::new(
                    at,
                    "unknown_action",
                    format!("no processor has an action {name:?}; known: {known:?}"),
                ));
                continue;
            };
            if let Some((pointer, message)) = action.shape(settings) {
                problems.push(FieldProblem::new(
                    format!("{at}{pointer}"),
                    "invalid_action",
                    message,
                ));
                continue;
            }
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

    fn echo() -> FormActions {
        FormActions::new([Arc::new(Action::new("echo", check_echo)) as Arc<dyn FormAction>])
    }

    #[test]
    fn actions_are_checked_by_their_owner_and_unknown_ones_are_refused() {
        let actions = echo();
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

    /// A check of the built version runs after every field's check, whatever field it belongs
    /// to: the order of a 422's problems (validate's rule compile after the receipt's check).
    #[test]
    fn checks_of_the_built_version_come_after_every_fields_check() {
        fn early(_: &Value, _: &FormBody) -> Vec<FieldProblem> {
            vec![FieldProblem::new("/early", "early", "")]
        }
        fn late(_: &Value, _: &FormVersion) -> Vec<FieldProblem> {
            vec![FieldProblem::new("/late", "late", "")]
        }
        fn store(_: Value, _: &mut FormVersion) {}
        fn show(_: &FormVersion) -> Option<Value> {
            None
        }
        let actions = FormActions::new([
            Arc::new(Action::field("rules", early, store, show).with_check_built(late))
                as Arc<dyn FormAction>,
            Arc::new(Action::field("receipt", early, store, show)),
        ]);
        let body: FormBody = serde_json::from_value(json!({
            "title": "t",
            "questions": [{"key": "name", "text": "Name", "type": "text"}],
            "rules": [],
            "receipt": {},
            "actions": {"echo": {}},
        }))
        .expect("a form body");
        let problems = actions.build_version(&body, 1, 0).expect_err("invalid");
        assert_eq!(
            pointers(problems),
            [
                ("/rules/early".to_owned(), "early"),
                ("/receipt/early".to_owned(), "early"),
                ("/rules/late".to_owned(), "late"),
                ("/actions/echo".to_owned(), "unknown_action"),
            ]
        );
    }

    #[test]
    fn a_stored_version_gives_an_action_its_settings() {
        let mut version =
            (echo().build_version(&body(json!({"echo": {"answers": ["name"]}})), 1, 0))
                .expect("a valid form");
        let echo: Echo = settings(&version, "echo").expect("the echo settings");
        assert_eq!(echo.answers, ["name"]);
        assert!(settings::<Echo>(&version, "other").is_none());
        version.actions_json = "{}".into();
        assert!(settings::<Echo>(&version, "echo").is_none());
    }
}
