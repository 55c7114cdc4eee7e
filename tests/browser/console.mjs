// The console's browser walk-through, run by tests/tests/console.rs with a gateway, the validate,
// journal and slang processors and a form with a flagged response already in place (their ids in
// the environment).
// Drives the system's Chromium (CHROMIUM) with Playwright's client; saves a screenshot of each page
// in SCREENSHOTS. Exits non-zero, with the reason, at the first step that does not happen.
import { chromium } from 'playwright-core';
import { mkdirSync, unlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';

const env = (name) => {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is not set`);
  return value;
};
const base = env('CONSOLE_URL');
const key = env('API_KEY');
const formId = env('FORM_ID');
const formJson = env('FORM_JSON');
const breaking = JSON.parse(env('BREAKING'));
const formTitle = env('FORM_TITLE');
const responseId = env('RESPONSE_ID');
const screenshots = env('SCREENSHOTS');
const correction = JSON.parse(env('CORRECTION'));
// Step 5: the journal processor's outage file (present: its target is down) and the responses
// submitted while it is down.
const outage = env('OUTAGE_FILE');
const broken = env('BROKEN_RESPONSES').split(',');
// The Slang step: a form with a slang action and answers in place; a city's expected top word and
// its count; a search and the answer it finds (with its city).
const slangForm = env('SLANG_FORM_ID');
const slangQuestion = env('SLANG_QUESTION');
const [topCity, topWord, topCount] = env('SLANG_TOP').split(',');
const slangSearch = env('SLANG_SEARCH');
const [foundCity, foundText] = env('SLANG_FOUND').split(',');
mkdirSync(screenshots, { recursive: true });

const step = (what) => console.log(`console.mjs: ${what}`);
const expect = (condition, message) => { if (!condition) throw new Error(message); };
// Flags arrive through Kafka and the validate processor; the page refreshes every 5 s.
const SLOW = { timeout: 60_000 };
// Dead letters wait for the journal's retry window (30 s) to pass first.
const SLOWER = { timeout: 120_000 };

const browser = await chromium.launch({
  executablePath: env('CHROMIUM'),
  // Root in CI has no user namespace sandbox; /dev/shm may be small in containers.
  args: ['--no-sandbox', '--disable-dev-shm-usage'],
});
try {
  const context = await browser.newContext({ viewport: { width: 1280, height: 860 } });
  const page = await context.newPage();
  const shot = async (name) => {
    await page.screenshot({ path: join(screenshots, `${name}.png`), fullPage: true });
    step(`screenshot ${name}.png`);
  };
  // 200 % zoom (a 640-pixel-wide window): the page reflows, nothing scrolls sideways but tables.
  const at200Percent = async (name) => {
    await page.setViewportSize({ width: 640, height: 430 });
    const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
    const wide = await page.evaluate(() => [...document.querySelectorAll('body *')]
      .filter((e) => e.getBoundingClientRect().right > window.innerWidth && !e.closest('.table'))
      .map((e) => e.tagName + (e.id ? `#${e.id}` : '')).slice(0, 10));
    expect(overflow <= 0, `at 200 % the page is ${overflow}px wider than the window: ${wide}`);
    await shot(name);
    await page.setViewportSize({ width: 1280, height: 860 });
  };

  step('sign in');
  await page.goto(`${base}/console`);
  await page.getByLabel('API key of your organisation').fill('not-a-key');
  await page.getByRole('button', { name: 'Sign in' }).click();
  await page.locator('#signin-error').getByText('Missing or invalid API key').waitFor();
  await page.getByLabel('API key of your organisation').fill(key);
  await shot('sign-in');
  await page.getByRole('button', { name: 'Sign in' }).click();
  await page.getByRole('heading', { name: 'Forms', level: 1 }).waitFor();

  const cookies = await context.cookies();
  const session = cookies.find((c) => c.name === 'formstream_console');
  expect(session, `no session cookie: ${JSON.stringify(cookies)}`);
  expect(session.httpOnly && session.sameSite === 'Strict', `cookie attributes: ${JSON.stringify(session)}`);
  expect(!session.value.includes(key), 'the cookie holds the key');
  const readable = await page.evaluate(() => document.cookie);
  expect(!readable.includes('formstream_console'), 'the page script can read the session cookie');

  step('CSRF: a cookie request but GET without the token is refused');
  const forged = await page.evaluate(async (id) => (await fetch(`/v1/forms/${id}`, {
    method: 'PUT', headers: { 'content-type': 'application/json' }, body: '{}',
  })).status, formId);
  expect(forged === 403, `PUT without x-csrf-token answered ${forged}`);

  step('keyboard: a new page puts the focus on its content');
  await page.keyboard.press('Tab');
  const inMain = await page.evaluate(() => document.getElementById('main').contains(document.activeElement));
  expect(inMain, 'after sign-in, Tab does not reach the page content first');
  const unlabelled = () => page.evaluate(() => [...document.querySelectorAll('input, select, textarea')]
    .filter((e) => !(e.labels && e.labels.length) && !e.getAttribute('aria-label')).map((e) => e.outerHTML));
  expect((await unlabelled()).length === 0, `controls without a label: ${await unlabelled()}`);

  step('create a form with a rule, with the keyboard');
  await page.getByLabel('A new form (JSON)').fill(formJson);
  await shot('forms');
  await page.keyboard.press('Tab');
  const focused = await page.evaluate(() => document.activeElement.textContent);
  expect(focused === 'Create form', `Tab from the editor focuses ${focused}`);
  await page.keyboard.press('Enter');
  await page.getByRole('heading', { name: formTitle, level: 1 }).waitFor();
  expect(page.url().endsWith(`#/forms/${formId}`), page.url());

  step('submit a breaking response by the API');
  const submitted = await fetch(`${base}/v1/forms/${formId}/responses`, {
    method: 'POST',
    headers: { authorization: `Bearer ${key}`, 'content-type': 'application/json' },
    body: JSON.stringify(breaking),
  });
  expect(submitted.status === 202, `the response answered ${submitted.status}: ${await submitted.text()}`);
  await page.getByText('Version 1', { exact: true }).waitFor();
  await shot('form');

  step('the editor shows the gateway\'s problems at their pointers');
  const body = JSON.parse(await page.locator('#form-json').inputValue());
  body.rules[0].expression = 'monthly_savings <=';
  await page.locator('#form-json').fill(JSON.stringify(body, null, 2));
  await page.getByRole('button', { name: 'Publish version 2' }).click();
  await page.locator('#edit-outcome').getByText('/rules/0').waitFor();
  await shot('form-problems');

  step('flags: the breaking response is open');
  await page.goto(`${base}/console#/flags/${formId}/open`);
  await page.locator(`tr[data-response="${responseId}"]`).waitFor(SLOW);
  await shot('flags-open');
  expect((await unlabelled()).length === 0, `controls without a label: ${await unlabelled()}`);

  step('200 % zoom: the page reflows, nothing scrolls sideways but the table');
  await at200Percent('flags-200-percent');

  step('correct it by the API; it is resolved');
  const corrected = await fetch(`${base}/v1/forms/${formId}/responses/${responseId}`, {
    method: 'PUT',
    headers: { authorization: `Bearer ${key}`, 'content-type': 'application/json' },
    body: JSON.stringify(correction),
  });
  expect(corrected.status === 202, `correction answered ${corrected.status}: ${await corrected.text()}`);
  await page.getByLabel('Status').selectOption('resolved');
  await page.locator(`tr[data-response="${responseId}"]`).getByText('by revision 1').waitFor(SLOW);
  await shot('flags-resolved');

  step('live: the processors have caught up; the journal\'s circuit is closed');
  await page.getByRole('link', { name: 'Live' }).click();
  const live = (name, cell) => page.locator(`tr[data-processor="${name}"] td.${cell}`);
  await live('validate', 'lag').getByText('0', { exact: true }).waitFor(SLOW);
  await live('journal', 'lag').getByText('0', { exact: true }).waitFor(SLOW);
  await live('journal', 'lag-seconds').getByText('0.0', { exact: true }).waitFor(SLOW);
  await live('journal', 'circuit').getByText('closed', { exact: true }).waitFor(SLOW);
  await live('validate', 'circuit').getByText('unknown', { exact: true }).waitFor(SLOW);
  await live('journal', 'dead-letters').getByText('0', { exact: true }).waitFor(SLOW);
  // A second sample gives the rates (and the chart) two points.
  await page.waitForFunction(() => {
    const cell = document.querySelector('td.rate');
    return cell && cell.textContent !== '…';
  }, null, SLOW);
  await shot('live');

  step('break the journal\'s target and submit responses');
  writeFileSync(outage, '');
  for (const id of broken) {
    const sent = await fetch(`${base}/v1/forms/${formId}/responses`, {
      method: 'POST',
      headers: { authorization: `Bearer ${key}`, 'content-type': 'application/json' },
      body: JSON.stringify({ response_id: id, collector: { id: 'collector-7' }, answers: { monthly_income: 1000, monthly_savings: 10 } }),
    });
    expect(sent.status === 202, `a response answered ${sent.status}: ${await sent.text()}`);
  }

  step('live: the journal\'s lag grows, in records and in seconds');
  const journalRow = (n, check) => page.waitForFunction(([n, check]) => {
    // The Live page's row: until it has rendered, the page left behind (Dead letters) may hold
    // a journal row of its own, without these cells.
    const row = document.querySelector('tr[data-processor="journal"]');
    const cells = ['lag', 'lag-seconds', 'dead-letters'].map((name) => row?.querySelector(`td.${name}`));
    if (cells.some((cell) => !cell)) return false;
    const [lagText, secondsText, dead] = cells.map((cell) => cell.textContent.trim());
    const [lag, seconds] = [Number(lagText), parseFloat(secondsText)];
    if (check === 'lagging') return lag >= n && seconds > 0;
    return dead === String(n) && lag === 0;
  }, [n, check], SLOWER);
  await journalRow(broken.length, 'lagging');
  await shot('live-lagging');

  step('live: past the retry window they are dead letters, and the lag is gone');
  await journalRow(broken.length, 'dead-lettered');

  step('dead letters: the journal\'s are listed');
  await page.getByRole('link', { name: 'Dead letters' }).click();
  const pending = page.locator('tr[data-processor="journal"] td.pending');
  await pending.getByText(String(broken.length), { exact: true }).waitFor(SLOW);
  await page.getByRole('link', { name: 'journal', exact: true }).click();
  await page.getByText(`${broken.length} pending`, { exact: true }).waitFor(SLOW);
  for (const id of broken) {
    await page.locator('td').getByText(id, { exact: true }).waitFor();
  }
  expect((await unlabelled()).length === 0, `controls without a label: ${await unlabelled()}`);
  await shot('dead-letters');

  step('fix the target and re-drive every pending one');
  unlinkSync(outage);
  await page.getByRole('button', { name: 'Re-drive all pending' }).click();
  await page.getByText(`redrive: ${broken.length} done, 0 skipped.`).waitFor(SLOW);
  await page.getByText('0 pending', { exact: true }).waitFor(SLOW);
  await pending.getByText('0', { exact: true }).waitFor(SLOW);
  await shot('dead-letters-redriven');

  step('live: no dead letters left');
  await page.getByRole('link', { name: 'Live' }).click();
  await journalRow(0, 'dead-lettered');

  step('slang: the top words of each city as bars, with their counts as text');
  await page.getByRole('link', { name: 'Slang' }).click();
  await page.getByRole('heading', { name: 'Slang', level: 1 }).waitFor();
  await page.getByLabel('Form and question').selectOption({ label: `Greetings (${slangForm}): ${slangQuestion}` });
  const top = page.locator(`section[data-city="${topCity}"] tbody tr`).first();
  await top.locator('th').getByText(topWord, { exact: true }).waitFor(SLOW);
  await top.locator('td.count').getByText(topCount, { exact: true }).waitFor();
  const barWidth = await top.locator('.bar').evaluate((bar) => bar.getBoundingClientRect().width);
  expect(barWidth > 0, `the bar of ${topWord} is ${barWidth}px wide`);
  expect((await unlabelled()).length === 0, `controls without a label: ${await unlabelled()}`);
  await shot('slang');

  step('slang: a search, with the keyboard, lists the matching answer with its city');
  await page.getByLabel('Words to find in the answers').focus();
  await page.keyboard.type(slangSearch);
  await page.keyboard.press('Enter');
  const hit = page.locator('#slang-answers tbody tr').filter({ hasText: foundText });
  await hit.waitFor(SLOW);
  const hitCity = await hit.locator('td').first().textContent();
  expect(hitCity === foundCity, `the answer's city is ${hitCity}`);
  const hits = await page.locator('#slang-answers tbody tr').count();
  expect(hits === 1, `the search lists ${hits} answers`);
  await shot('slang-search');
  await at200Percent('slang-200-percent');

  step('sign out');
  await page.getByRole('button', { name: 'Sign out' }).click();
  await page.getByRole('heading', { name: 'Sign in' }).waitFor();
  const after = await page.evaluate(async () => (await fetch('/v1/forms')).status);
  expect(after === 401, `after sign-out GET /v1/forms answered ${after}`);
  step('done');
} finally {
  await browser.close();
}
