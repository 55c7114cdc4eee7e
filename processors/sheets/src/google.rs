//! The Google Sheets target: per form (organisation, form id), a chain of spreadsheets ("parts"), each with one tab
//! [`TAB`] holding a header row and one row per response.
//!
//! Exactly once, with the sheet as the source of truth:
//! - Before a form's first write after start, and again whenever a record comes from a newer
//!   assignment of its partition (the partition may have been processed elsewhere meanwhile),
//!   or after a write whose outcome is unknown, the response-id and revision columns of every
//!   part are read back (one `spreadsheets.get` with `includeGridData` of `A:B` and the header). That read-back is the index: which response
//!   has which row, at which revision.
//! - A response not in the index is appended; one in it at a lower revision is rewritten in place
//!   at its row; one at the same or a higher revision is already done.
//! - As few writes per flush as the bytes allow (the per-minute write quota is what bounds a
//!   busy form). New rows alone (no correction, no header to rewrite, no column to add) go by
//!   `values.append` with `valueInputOption=RAW`: each cell a bare JSON value (37 bytes less
//!   than a `CellData` when it has a value: 0.31x the bytes for the benchmark's rows), and a string never
//!   parsed (an answer `=IMPORTXML(...)` stays text).
//!   Everything else a flush does to one spreadsheet (widen the grid for new questions, rewrite
//!   the header, `updateCells` of the corrections at their rows, and as many new rows as fit as
//!   one `appendCells`) is one `spreadsheets.batchUpdate`, which Google applies atomically; the
//!   new rows that do not fit follow by `values.append`. So a flush costs one write (more only
//!   past `--sheets-max-request-bytes`, measured as sent, or across parts), never more than
//!   with `appendCells` alone.
//! - Every write learns where its rows went: a `batchUpdate` from the response-id cells of the
//!   rows it meant to write (`responseRanges`), a `values.append` from its `updatedRange`. A row
//!   not where it was meant (another writer appended meanwhile) marks the index stale, and the
//!   rest of the flush waits for a read-back. `values.append` uses `insertDataOption=OVERWRITE`:
//!   like `appendCells`, it fills the grid's empty rows below the data before adding rows, which
//!   is what `Part::room` counts against the cell limit (`INSERT_ROWS` would add a row for
//!   each row even where the grid has empty ones).
//! - An append is not idempotent. If its answer is lost (a timeout, a 5xx, a crash before the
//!   offset commit), the rows may be in the sheet: the index is marked stale, and the retry (or
//!   the next owner of the partition, after a crash) reads the sheet back first, finds them, and
//!   does not append them again.
//! - Parts after the first (and a first part the exporter creates) are recorded in the effect
//!   ledger (a compacted Kafka topic), under the form's organisation and id: `attempted` before
//!   `spreadsheets.create`, `done` with the new id after. A crash between the two leaves at most an empty spreadsheet behind (logged with
//!   its title), never rows in a spreadsheet the read-back does not know.
//!
//! Rollover: a part's cells (every tab's grid, as Google counts them) never pass the cell limit;
//! rows that would are written to a new part titled `<title> (formstream <form id>, part N)`,
//! with the header repeated.
//!
//! Residual risk, stated: two instances writing the same form at once (a rebalance while an
//! append is in flight on the old owner) can append a row twice; the write's answer then shows
//! another response at a row it meant, which is logged and makes the index reload.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use formstream_core::identity::FormKey;
use formstream_runtime::{Entry, Ledger};
use formstream_schemas::Form;
use serde_json::{Value, json};

use crate::api::{ApiError, SheetsApi, Tab, cell_data, row_data_bytes};
use crate::layout::{Layout, row_bytes};
use crate::sink::{Pending, newest_form};

/// The tab every part writes to.
pub const TAB: &str = "responses";

/// Bytes of a `spreadsheets.batchUpdate` body besides its rows, at most: the body's own fields,
/// an `appendDimension`, the `appendCells` around the new rows and their `responseRanges` entry.
const BATCH_UPDATE_BYTES: usize = 320;

/// Bytes of one `updateCells` besides its row's `RowData`, at most, with its `responseRanges`
/// entry.
const UPDATE_CELLS_BYTES: usize = 170;

/// Bytes of a `values.append` body besides its rows: `{"majorDimension":"ROWS","values":[]}`
/// (each row's [`row_bytes`] counts a comma after it).
const VALUES_APPEND_BYTES: usize = 36;

/// Where a form's first part is.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Home {
    Named(String),
    Created,
}

/// One spreadsheet of a form's chain.
#[derive(Debug, Clone)]
struct Part {
    spreadsheet_id: String,
    sheet_id: i64,
    /// Rows holding data, the header included (the next append lands on `rows + 1`).
    rows: u64,
    /// The tab's grid, as Google counts cells.
    grid_rows: u64,
    grid_columns: u64,
    /// Cells of the spreadsheet's other tabs.
    other_cells: u64,
    /// Cells in the header row (0: not written yet).
    header_width: u64,
    /// Google said it is at the cell limit: new rows go to the next part.
    full: bool,
}

impl Part {
    /// Rows that can still be appended at `width` columns within `limit` cells.
    fn room(&self, width: u64, limit: u64) -> u64 {
        if self.full {
            return 0;
        }
        let columns = self.grid_columns.max(width).max(1);
        // `appendCells` fills the grid's empty rows below the data first, then inserts rows.
        let rows = (limit.saturating_sub(self.other_cells) / columns).max(self.grid_rows);
        rows.saturating_sub(self.rows)
    }

    /// Whether widening the grid to `width` columns would pass `limit` cells.
    fn needs_widening_past(&self, width: u64, limit: u64) -> bool {
        self.grid_columns < width && self.other_cells + self.grid_rows * width > limit
    }
}

#[derive(Debug, Clone, Copy)]
struct Slot {
    part: usize,
    row: u64,
    revision: i32,
}

/// What is known about one form's spreadsheets.
#[derive(Debug)]
struct Book {
    home: Home,
    parts: Vec<Part>,
    index: HashMap<String, Slot>,
    /// The newest partition assignment the index was read back for; `None`: never read.
    read_for: Option<u64>,
    /// A write's outcome is unknown: read back before the next one.
    stale: bool,
}

/// The Google target.
pub struct Google {
    api: SheetsApi,
    ledger: Ledger,
    cell_limit: u64,
    max_request_bytes: usize,
    /// Per form: two organisations' forms of the same id are two books, two chains.
    books: Mutex<HashMap<FormKey, Arc<tokio::sync::Mutex<Book>>>>,
}

impl Google {
    pub fn new(api: SheetsApi, ledger: Ledger, cell_limit: u64, max_request_bytes: usize) -> Self {
        Google {
            api,
            ledger,
            cell_limit,
            max_request_bytes,
            books: Mutex::new(HashMap::new()),
        }
    }

    /// One cheap read: any answer but a 429/5xx or no answer means the API is back.
    pub async fn probe(&self) -> Result<(), ApiError> {
        match self.api.tabs("formstream-probe").await {
            Ok(_) | Err(ApiError::Rejected { .. }) => Ok(()),
            Err(error) => Err(error),
        }
    }

    /// Whether `spreadsheet_id` can be written again: any answer but a 429/5xx, a refusal of
    /// access or no answer. (For a chain the exporter creates, `spreadsheet_id` is its form id,
    /// which Google answers 404: the API answers.)
    pub async fn probe_spreadsheet(&self, spreadsheet_id: &str) -> Result<(), ApiError> {
        match self.api.tabs(spreadsheet_id).await {
            Ok(_) | Err(ApiError::Rejected { .. }) => Ok(()),
            Err(error) => Err(error),
        }
    }

    fn book(&self, key: &FormKey, home: &Home) -> Arc<tokio::sync::Mutex<Book>> {
        let mut books = self.books.lock().unwrap_or_else(|p| p.into_inner());
        let fresh = || {
            Arc::new(tokio::sync::Mutex::new(Book {
                home: home.clone(),
                parts: Vec::new(),
                index: HashMap::new(),
                read_for: None,
                stale: true,
            }))
        };
        let book = books.entry(key.clone()).or_insert_with(fresh);
        // A new version named another spreadsheet: start over there.
        if book.try_lock().is_ok_and(|b| b.home != *home) {
            *book = fresh();
        }
        book.clone()
    }

    pub async fn write(&self, key: &FormKey, rows: &[Pending]) -> Vec<Result<(), ApiError>> {
        let Some(form) = newest_form(rows).cloned() else {
            return Vec::new();
        };
        // The processor only queues forms with a sheets action.
        let Some(home) = home_of(&form) else {
            return rows.iter().map(|_| Ok(())).collect();
        };
        let book = self.book(key, &home);
        let mut book = book.lock().await;
        let assignment = rows.iter().map(|p| p.assignment).max().unwrap_or(0);
        if let Err(error) = self.read_back_for(&mut book, key, assignment).await {
            return rows.iter().map(|_| Err(error.clone())).collect();
        }
        let layout = Layout::of(&form);
        let mut results: Vec<Result<(), ApiError>> = rows.iter().map(|_| Ok(())).collect();
        let mut updates: Vec<usize> = Vec::new();
        let mut appends: Vec<usize> = Vec::new();
        for (i, pending) in rows.iter().enumerate() {
            let response = &pending.response;
            match book.index.get(&response.response_id) {
                Some(slot) if slot.revision >= response.revision => {
                    tracing::debug!(response_id = %response.response_id, revision = response.revision, "Row already in the sheet; skipped.")
                }
                Some(_) => updates.push(i),
                None => appends.push(i),
            }
        }
        self.flush(
            &mut book,
            key,
            &form,
            &layout,
            rows,
            &updates,
            &appends,
            &mut results,
        )
        .await;
        results
    }

    /// Reads the form's parts back unless the book is current for `assignment`.
    async fn read_back_for(
        &self,
        book: &mut Book,
        key: &FormKey,
        assignment: u64,
    ) -> Result<(), ApiError> {
        if book.stale || book.read_for.is_none_or(|read| read < assignment) {
            self.read_back(book, key).await?;
            book.read_for = Some(assignment);
            book.stale = false;
        }
        Ok(())
    }

    /// Whether the form's first spreadsheet is still to be created by the exporter, as far as
    /// this instance knows without asking anyone (its book, else the ledger's view): a cheap
    /// guess for the batcher, which [`Google::prepare`] checks.
    pub fn needs_spreadsheet(&self, key: &FormKey, form: &Form) -> bool {
        if home_of(form) != Some(Home::Created) {
            return false;
        }
        let book = self
            .books
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(key)
            .cloned();
        if let Some(book) = book {
            // Being written: the write creates it if need be.
            let Ok(book) = book.try_lock() else {
                return false;
            };
            if book.read_for.is_some() && book.home == Home::Created {
                return book.parts.is_empty();
            }
        }
        !matches!(
            self.ledger.get(&ledger_key(key, &Home::Created, 1)),
            Some(Entry::Done { .. })
        )
    }

    /// Creates the form's first spreadsheet if it has none yet (reading its parts back first, as
    /// a write would), and writes no row: a create is a write of the quota that every form
    /// needs once, which the batcher spends while the quota has room, so that the form's rows
    /// later cost only their own writes.
    pub async fn prepare(&self, key: &FormKey, pending: &Pending) -> Result<(), ApiError> {
        let form = pending.form.clone();
        let Some(home) = home_of(&form) else {
            return Ok(());
        };
        let book = self.book(key, &home);
        let mut book = book.lock().await;
        self.read_back_for(&mut book, key, pending.assignment)
            .await?;
        if book.parts.is_empty() {
            let width = Layout::of(&form).width() as u64;
            self.new_part(&mut book, key, &form, width).await?;
        }
        Ok(())
    }

    /// Reads every part of the form back: its tab (added if missing), its header width and its
    /// response ids and revisions.
    async fn read_back(&self, book: &mut Book, key: &FormKey) -> Result<(), ApiError> {
        book.parts.clear();
        book.index.clear();
        let mut duplicates = 0usize;
        for number in 1.. {
            let id = match (&book.home, number) {
                (Home::Named(id), 1) => Some(id.clone()),
                _ => {
                    let entry_key = ledger_key(key, &book.home, number);
                    self.ledger
                        .sync_key(&entry_key)
                        .await
                        .map_err(|e| ApiError::Ledger(e.to_string()))?;
                    match self.ledger.get(&entry_key) {
                        Some(Entry::Done { detail, .. }) => Some(detail),
                        _ => None,
                    }
                }
            };
            let Some(id) = id else { break };
            // One read: the tabs and the response-id, revision and header cells.
            let (tabs, mut read) = match self.api.tabs_and_cells(&id, TAB, &["A:B", "1:1"]).await? {
                Some((tabs, cells)) => (tabs, cells.into_iter()),
                None => (self.api.tabs(&id).await?, Vec::new().into_iter()),
            };
            let (tab, other_cells) = match tabs.iter().find(|t| t.title == TAB) {
                Some(tab) => (
                    tab.clone(),
                    tabs.iter()
                        .filter(|t| t.title != TAB)
                        .map(|t| t.rows * t.columns)
                        .sum(),
                ),
                None => {
                    let others = tabs.iter().map(|t| t.rows * t.columns).sum();
                    (self.api.add_tab(&id, TAB, 4).await?, others)
                }
            };
            let ids = read.next().unwrap_or_default();
            let header = read.next().unwrap_or_default();
            let part = book.parts.len();
            for (i, cells) in ids.iter().enumerate().skip(1) {
                let Some(response_id) = cells
                    .first()
                    .and_then(Value::as_str)
                    .filter(|s| !s.is_empty())
                else {
                    continue;
                };
                let revision = cells.get(1).and_then(revision_of).unwrap_or(0);
                let slot = Slot {
                    part,
                    row: i as u64 + 1,
                    revision,
                };
                match book.index.get(response_id) {
                    Some(held) => {
                        duplicates += 1;
                        if held.revision < revision {
                            book.index.insert(response_id.to_owned(), slot);
                        }
                    }
                    None => {
                        book.index.insert(response_id.to_owned(), slot);
                    }
                }
            }
            book.parts.push(part_of(
                id,
                &tab,
                ids.len() as u64,
                other_cells,
                header.first().map_or(0, |h| h.len() as u64),
            ));
        }
        if duplicates > 0 {
            tracing::warn!(
                organisation = %key.organisation,
                form_id = %key.form_id,
                duplicates,
                "The sheet holds response ids more than once (written by two instances at once?); the highest revision is kept up to date."
            );
        }
        tracing::info!(
            organisation = %key.organisation,
            form_id = %key.form_id,
            parts = book.parts.len(),
            rows = book.index.len(),
            "Read the sheet back."
        );
        Ok(())
    }

    /// Writes the corrections and the new rows of one flush: per part, one
    /// `spreadsheets.batchUpdate` carrying everything that part needs (its columns widened, its
    /// header rewritten, the corrections as `updateCells` at their rows, the new rows as one
    /// `appendCells`), so that a flush of a form in one spreadsheet costs one write of the quota
    /// (more only past `--sheets-max-request-bytes` or at a rollover).
    #[allow(clippy::too_many_arguments)]
    async fn flush(
        &self,
        book: &mut Book,
        key: &FormKey,
        form: &Form,
        layout: &Layout,
        rows: &[Pending],
        updates: &[usize],
        appends: &[usize],
        results: &mut [Result<(), ApiError>],
    ) {
        let mut by_part: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
        for &i in updates {
            if let Some(slot) = book.index.get(&rows[i].response.response_id) {
                by_part.entry(slot.part).or_default().push(i);
            }
        }
        let width = layout.width() as u64;
        let mut start = 0;
        while start < appends.len() {
            if book.stale {
                fail_all(results, &appends[start..], &by_part, &moved());
                return;
            }
            let part = match self.part_with_room(book, key, form, width).await {
                Ok(part) => part,
                Err(error) => {
                    fail_all(results, &appends[start..], &by_part, &error);
                    return;
                }
            };
            let corrections = by_part.remove(&part).unwrap_or_default();
            let mut taken_updates = 0;
            loop {
                if book.stale {
                    let rest = BTreeMap::from([(part, corrections[taken_updates..].to_vec())]);
                    fail_all(results, &appends[start..], &rest, &moved());
                    fail_all(results, &[], &by_part, &moved());
                    return;
                }
                let outcome = self
                    .send(
                        book,
                        key,
                        part,
                        layout,
                        rows,
                        &corrections[taken_updates..],
                        &appends[start..],
                    )
                    .await;
                match outcome {
                    Ok((updated, appended)) => {
                        taken_updates += updated;
                        start += appended;
                        if updated == 0 && appended == 0 {
                            // The part filled up: the rest goes to the next one.
                            break;
                        }
                        if taken_updates == corrections.len() {
                            break;
                        }
                    }
                    Err(error) => {
                        let rest = BTreeMap::from([(part, corrections[taken_updates..].to_vec())]);
                        fail_all(results, &appends[start..], &rest, &error);
                        fail_all(results, &[], &by_part, &error);
                        return;
                    }
                }
            }
            if taken_updates < corrections.len() {
                by_part.insert(part, corrections[taken_updates..].to_vec());
            }
        }
        for (part, corrections) in by_part {
            let mut taken = 0;
            while taken < corrections.len() {
                if book.stale {
                    for &i in &corrections[taken..] {
                        results[i] = Err(moved());
                    }
                    break;
                }
                match self
                    .send(book, key, part, layout, rows, &corrections[taken..], &[])
                    .await
                {
                    Ok((0, _)) => break,
                    Ok((updated, _)) => taken += updated,
                    Err(error) => {
                        for &i in &corrections[taken..] {
                            results[i] = Err(error.clone());
                        }
                        break;
                    }
                }
            }
        }
    }

    /// The last part, when it has room for a row of `width` cells; otherwise a new part.
    async fn part_with_room(
        &self,
        book: &mut Book,
        key: &FormKey,
        form: &Form,
        width: u64,
    ) -> Result<usize, ApiError> {
        let header_rows = |part: &Part| u64::from(part.rows == 0);
        if let Some(part) = book.parts.last()
            && part.room(width, self.cell_limit) > header_rows(part)
            && !part.needs_widening_past(width, self.cell_limit)
        {
            return Ok(book.parts.len() - 1);
        }
        self.new_part(book, key, form, width).await?;
        if book
            .parts
            .last()
            .is_none_or(|p| p.room(width, self.cell_limit) <= 1)
        {
            return Err(ApiError::Rejected {
                status: 0,
                detail: format!(
                    "--sheets-cell-limit {} leaves no room for one row of {width} cells",
                    self.cell_limit
                ),
            });
        }
        Ok(book.parts.len() - 1)
    }

    /// One write on part `part_number`: as many of `updates` (rows in this part) and then of
    /// `appends` as fit in one request and in the part; how many of each it wrote. Nothing is
    /// sent when nothing fits. New rows alone (no correction, no header to rewrite, no column to
    /// add) go by `values.append` ([`Google::append_values`]), everything else by one
    /// `spreadsheets.batchUpdate` ([`Google::update_and_append`]).
    #[allow(clippy::too_many_arguments)]
    async fn send(
        &self,
        book: &mut Book,
        key: &FormKey,
        part_number: usize,
        layout: &Layout,
        rows: &[Pending],
        updates: &[usize],
        appends: &[usize],
    ) -> Result<(usize, usize), ApiError> {
        let width = layout.width() as u64;
        let part = &book.parts[part_number];
        let header_rewrite = part.rows > 0 && part.header_width < width;
        if updates.is_empty() && part.grid_columns >= width && !header_rewrite {
            let appended = self
                .append_values(book, key, part_number, layout, rows, appends)
                .await?;
            return Ok((0, appended));
        }
        self.update_and_append(book, key, part_number, layout, rows, updates, appends)
            .await
    }

    /// One `values.append` (RAW) on part `part_number` of as many of `appends` as fit in one
    /// request (measured as the bare values it sends) and in the part, with the header first
    /// when the part has no row yet; how many it wrote. Its answer says where the rows went: not
    /// at the row the index expected (another writer appended meanwhile) marks the index stale,
    /// as a lost answer does (the retry reads the sheet back first, so no row is added twice).
    async fn append_values(
        &self,
        book: &mut Book,
        key: &FormKey,
        part_number: usize,
        layout: &Layout,
        rows: &[Pending],
        appends: &[usize],
    ) -> Result<usize, ApiError> {
        let width = layout.width() as u64;
        let part = &book.parts[part_number];
        let header_rows = u64::from(part.rows == 0);
        let room = part
            .room(width, self.cell_limit)
            .saturating_sub(header_rows);
        let mut values: Vec<Vec<Value>> = Vec::new();
        let mut bytes = VALUES_APPEND_BYTES;
        if header_rows == 1 {
            let header = layout.header();
            bytes += row_bytes(&header);
            values.push(header);
        }
        let mut taken = 0usize;
        for &i in appends {
            if taken as u64 >= room {
                break;
            }
            let cells = layout.row(&rows[i].response);
            let size = row_bytes(&cells);
            if taken > 0 && bytes + size > self.max_request_bytes {
                break;
            }
            bytes += size;
            values.push(cells);
            taken += 1;
        }
        if taken == 0 {
            // A full part: the rows go to the next one.
            return Ok(0);
        }
        let first_row = part.rows + 1;
        let spreadsheet_id = part.spreadsheet_id.clone();
        let landed = match self.api.append_values(&spreadsheet_id, TAB, &values).await {
            Ok(landed) => landed,
            Err(error) => return Err(self.write_failed(book, key, part_number, error)),
        };
        if landed.first_row != first_row || landed.rows != values.len() as u64 {
            tracing::warn!(
                organisation = %key.organisation,
                form_id = %key.form_id,
                spreadsheet_id,
                expected_row = first_row,
                row = landed.first_row,
                rows = landed.rows,
                "Rows are not where they were appended (another writer?); reading the sheet back before the next write."
            );
            book.stale = true;
        }
        let part = &mut book.parts[part_number];
        if header_rows == 1 {
            part.header_width = width;
        }
        part.rows = first_row + values.len() as u64 - 1;
        part.grid_rows = part.grid_rows.max(part.rows);
        let first_data_row = first_row + header_rows;
        index_appended(book, part_number, first_data_row, rows, &appends[..taken]);
        tracing::info!(
            organisation = %key.organisation,
            form_id = %key.form_id,
            spreadsheet_id,
            appended = taken,
            first_row = first_data_row,
            bytes,
            "Rows appended."
        );
        Ok(taken)
    }

    /// One `spreadsheets.batchUpdate` on part `part_number`: the grid widened for new
    /// questions, the header rewritten, as many of `updates` (rows in this part) as `updateCells`
    /// and then of `appends` as one `appendCells` as fit in one request and in the part; how many
    /// of each it wrote. Nothing is sent when nothing fits.
    #[allow(clippy::too_many_arguments)]
    async fn update_and_append(
        &self,
        book: &mut Book,
        key: &FormKey,
        part_number: usize,
        layout: &Layout,
        rows: &[Pending],
        updates: &[usize],
        appends: &[usize],
    ) -> Result<(usize, usize), ApiError> {
        let width = layout.width() as u64;
        let part = &mut book.parts[part_number];
        let sheet_id = part.sheet_id;
        let mut requests: Vec<Value> = Vec::new();
        let mut bytes = BATCH_UPDATE_BYTES;
        // New questions: widen the grid, unless that would pass the cell limit (then the part
        // is full, and its corrections keep the columns there are).
        let mut columns = part.grid_columns;
        if columns < width {
            if part.needs_widening_past(width, self.cell_limit) {
                part.full = true;
            } else {
                requests.push(json!({"appendDimension": {"sheetId": sheet_id,
                    "dimension": "COLUMNS", "length": width - columns}}));
                columns = width;
            }
        }
        let columns_used = columns.min(width).max(1) as usize;
        let header_now = part.rows > 0 && part.header_width < width && columns >= width;
        if header_now {
            let header = layout.header();
            bytes += row_data_bytes(&header) + UPDATE_CELLS_BYTES;
            requests.push(update_cells(sheet_id, 1, &header));
        }
        let mut taken_updates = 0usize;
        let mut checks: Vec<String> = Vec::new();
        let mut expected_ids: Vec<(u64, &str)> = Vec::new();
        for &i in updates {
            let response = &rows[i].response;
            let Some(slot) = book.index.get(&response.response_id) else {
                taken_updates += 1;
                continue;
            };
            let mut cells = layout.row(response);
            cells.truncate(columns_used);
            let size = row_data_bytes(&cells) + UPDATE_CELLS_BYTES;
            if taken_updates > 0 && bytes + size > self.max_request_bytes {
                break;
            }
            bytes += size;
            requests.push(update_cells(sheet_id, slot.row, &cells));
            expected_ids.push((slot.row, response.response_id.as_str()));
            checks.push(format!("{TAB}!A{row}:A{row}", row = slot.row));
            taken_updates += 1;
        }
        let part = &book.parts[part_number];
        let header_rows = u64::from(part.rows == 0);
        let room = part
            .room(width, self.cell_limit)
            .saturating_sub(header_rows);
        let mut values: Vec<Vec<Value>> = Vec::new();
        let mut taken_appends = 0usize;
        if !part.full && room > 0 && taken_updates == updates.len() {
            if header_rows == 1 && !appends.is_empty() {
                let header = layout.header();
                bytes += row_data_bytes(&header);
                values.push(header);
            }
            for &i in appends {
                if taken_appends as u64 >= room {
                    break;
                }
                let cells = layout.row(&rows[i].response);
                let size = row_data_bytes(&cells);
                let first = taken_appends == 0 && taken_updates == 0;
                if !first && bytes + size > self.max_request_bytes {
                    break;
                }
                bytes += size;
                values.push(cells);
                taken_appends += 1;
            }
            if taken_appends == 0 {
                values.clear();
            }
        }
        let first_row = part.rows + 1;
        if !values.is_empty() {
            let data: Vec<Value> = values
                .iter()
                .map(|cells| json!({"values": cells.iter().map(cell_data).collect::<Vec<_>>()}))
                .collect();
            requests.push(json!({"appendCells": {"sheetId": sheet_id, "rows": data,
                "fields": "userEnteredValue"}}));
            let last = first_row + values.len() as u64 - 1;
            let first_data_row = first_row + header_rows;
            for (k, &i) in appends[..taken_appends].iter().enumerate() {
                expected_ids.push((
                    first_data_row + k as u64,
                    rows[i].response.response_id.as_str(),
                ));
            }
            checks.push(format!("{TAB}!A{first_data_row}:A{last}"));
        }
        if checks.is_empty() {
            // Nothing to write here (a full part, or only corrections of rows not indexed).
            return Ok((taken_updates, 0));
        }
        // The response ids the write leaves at the rows it meant (each correction's row and the
        // appended ones): with `appendCells`, the answer is the only way to see where rows went.
        let spreadsheet_id = part.spreadsheet_id.clone();
        let landed = match self
            .api
            .update_and_check(&spreadsheet_id, requests, &checks)
            .await
        {
            Ok(landed) => landed,
            Err(error) => return Err(self.write_failed(book, key, part_number, error)),
        };
        let mismatched = expected_ids
            .iter()
            .find(|(row, id)| landed.get(row).and_then(Value::as_str) != Some(*id));
        if let Some((row, id)) = mismatched {
            tracing::warn!(
                organisation = %key.organisation,
                form_id = %key.form_id,
                spreadsheet_id,
                row,
                response_id = %id,
                "A row is not where it was written (another writer?); reading the sheet back before the next write."
            );
            book.stale = true;
        }
        let part = &mut book.parts[part_number];
        part.grid_columns = columns;
        if header_now || (!values.is_empty() && header_rows == 1) {
            part.header_width = width;
        }
        if !values.is_empty() {
            part.rows = first_row + values.len() as u64 - 1;
            part.grid_rows = part.grid_rows.max(part.rows);
        }
        for &i in &updates[..taken_updates] {
            let response = &rows[i].response;
            if let Some(slot) = book.index.get_mut(&response.response_id) {
                slot.revision = response.revision;
                tracing::debug!(response_id = %response.response_id, revision = response.revision, "Row updated in place.");
            }
        }
        let first_data_row = first_row + header_rows;
        index_appended(
            book,
            part_number,
            first_data_row,
            rows,
            &appends[..taken_appends],
        );
        tracing::info!(
            organisation = %key.organisation,
            form_id = %key.form_id,
            spreadsheet_id,
            updated = taken_updates,
            appended = taken_appends,
            first_row = first_data_row,
            "Rows written."
        );
        Ok((taken_updates, taken_appends))
    }

    /// What a failed write means for the book: its outcome unknown (read back first), or the
    /// part at Google's cell limit (new rows go to a new part), or the grid not as we thought.
    fn write_failed(
        &self,
        book: &mut Book,
        key: &FormKey,
        part_number: usize,
        error: ApiError,
    ) -> ApiError {
        if error.is_ambiguous() || error.is_cell_limit() || error.is_grid_limit() {
            // The rows may be there (or the accounting was off): read back first.
            book.stale = true;
        }
        if error.is_cell_limit() {
            let part = &mut book.parts[part_number];
            part.full = true;
            tracing::warn!(
                organisation = %key.organisation,
                form_id = %key.form_id,
                spreadsheet_id = %part.spreadsheet_id,
                "Google says the spreadsheet is at its cell limit; continuing in a new one."
            );
        }
        if error.is_cell_limit() || error.is_grid_limit() {
            // Retried: after the read-back, the rows go where there is room.
            return ApiError::Throttled {
                status: 400,
                retry_after: None,
                detail: error.to_string(),
            };
        }
        error
    }

    /// Creates the next part, recording it in the ledger before (attempted) and after (done).
    async fn new_part(
        &self,
        book: &mut Book,
        key: &FormKey,
        form: &Form,
        width: u64,
    ) -> Result<(), ApiError> {
        let number = book.parts.len() + 1;
        let entry_key = ledger_key(key, &book.home, number);
        let title = part_title(form, &key.form_id, number);
        self.ledger
            .sync_key(&entry_key)
            .await
            .map_err(ledger_error)?;
        match self.ledger.get(&entry_key) {
            Some(Entry::Done { detail, .. }) => {
                // Another instance made it meanwhile: read everything back.
                tracing::info!(organisation = %key.organisation, form_id = %key.form_id, spreadsheet_id = %detail, number, "A newer part exists; reading it back.");
                book.stale = true;
                return Err(ApiError::Unavailable(
                    "the form's spreadsheets changed; reading them back".into(),
                ));
            }
            Some(Entry::Attempted { .. }) => {
                tracing::warn!(organisation = %key.organisation, form_id = %key.form_id, number, %title, "An earlier attempt to create this spreadsheet did not finish; an empty spreadsheet with this title may exist and can be deleted.");
            }
            None => {}
        }
        self.ledger
            .record(&entry_key, Entry::attempted(title.clone()))
            .await
            .map_err(ledger_error)?;
        let (id, tab) = self.api.create(&title, TAB, width).await?;
        self.ledger
            .record(&entry_key, Entry::done(id.clone()))
            .await
            .map_err(ledger_error)?;
        tracing::info!(organisation = %key.organisation, form_id = %key.form_id, spreadsheet_id = %id, number, %title, "Created a spreadsheet for the form.");
        book.parts.push(part_of(id, &tab, 0, 0, 0));
        Ok(())
    }
}

fn ledger_error(error: formstream_runtime::LedgerError) -> ApiError {
    ApiError::Ledger(error.to_string())
}

fn part_of(
    spreadsheet_id: String,
    tab: &Tab,
    rows: u64,
    other_cells: u64,
    header_width: u64,
) -> Part {
    Part {
        spreadsheet_id,
        sheet_id: tab.sheet_id,
        rows,
        grid_rows: tab.rows.max(rows),
        grid_columns: tab.columns,
        other_cells,
        header_width,
        full: false,
    }
}

/// Records `appends`, written from row `first_row` of part `part`, in the index.
fn index_appended(
    book: &mut Book,
    part: usize,
    first_row: u64,
    rows: &[Pending],
    appends: &[usize],
) {
    for (k, &i) in appends.iter().enumerate() {
        let response = &rows[i].response;
        book.index.insert(
            response.response_id.clone(),
            Slot {
                part,
                row: first_row + k as u64,
                revision: response.revision,
            },
        );
    }
}

/// An `updateCells` of one row (1-based `row`) from column A: `fields` says every cell's value
/// is replaced, an empty one cleared.
fn update_cells(sheet_id: i64, row: u64, cells: &[Value]) -> Value {
    json!({"updateCells": {
        "start": {"sheetId": sheet_id, "rowIndex": row - 1, "columnIndex": 0},
        "rows": [{"values": cells.iter().map(cell_data).collect::<Vec<_>>()}],
        "fields": "userEnteredValue",
    }})
}

/// The rows of a flush after a write found rows where it did not expect them: retried once the
/// sheet is read back, so that no correction goes to a row that may hold another response.
fn moved() -> ApiError {
    ApiError::Unavailable("rows of the sheet moved (another writer?); reading it back".into())
}

/// Answers `error` to every row in `appends` and in `by_part`.
fn fail_all(
    results: &mut [Result<(), ApiError>],
    appends: &[usize],
    by_part: &BTreeMap<usize, Vec<usize>>,
    error: &ApiError,
) {
    for &i in appends.iter().chain(by_part.values().flatten()) {
        results[i] = Err(error.clone());
    }
}

fn revision_of(value: &Value) -> Option<i32> {
    match value {
        Value::Number(n) => n.as_f64().map(|f| f as i32),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

/// Where the form's rows go, by its newest version; `None` without a sheets action.
fn home_of(form: &Form) -> Option<Home> {
    let sheets = form.current()?.sheets.as_ref()?;
    Some(match &sheets.spreadsheet_id {
        Some(id) => Home::Named(id.clone()),
        None => Home::Created,
    })
}

/// The ledger key of part `number` of a form's chain from `home`:
/// `sheets/<organisation>/<form id>/created/part/<n>` for the spreadsheets the exporter creates,
/// so that every created spreadsheet is recorded with the organisation it belongs to, and two
/// organisations' forms of the same id never continue in each other's.
fn ledger_key(form: &FormKey, home: &Home, number: usize) -> String {
    match home {
        Home::Named(id) => format!("sheets/{form}/{id}/part/{number}"),
        Home::Created => format!("sheets/{form}/created/part/{number}"),
    }
}

/// The title of a part the exporter creates: predictable from the form, so that people find it.
pub fn part_title(form: &Form, form_id: &str, number: usize) -> String {
    let title = form.current().map_or("Responses", |v| v.title.as_str());
    if number == 1 {
        format!("{title} (formstream {form_id})")
    } else {
        format!("{title} (formstream {form_id}, part {number})")
    }
}
