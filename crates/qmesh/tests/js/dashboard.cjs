// Drives the discovery dashboard in headless Chromium (playwright-core).
// Run by crates/qmesh/tests/discovery_dashboard.rs, which starts
// `qmesh discovery`, sends the heartbeats and pauses or resumes a process
// when this script prints `CMD pause NAME` / `CMD resume NAME` (it answers
// `OK` on stdin once done).
//
// usage: node dashboard.cjs URL PLAYWRIGHT_CORE_DIR CHROMIUM [SCREENSHOT.png]
"use strict";

const readline = require("readline");
const [url, pwDir, chromiumPath, shot] = process.argv.slice(2);
const { chromium } = require(pwDir);

const rl = readline.createInterface({ input: process.stdin });
const acks = [];
rl.on("line", (l) => { const f = acks.shift(); if (f) f(l); });
function cmd(text) {
  return new Promise((resolve) => { acks.push(resolve); process.stdout.write(`CMD ${text}\n`); });
}
function ok(what) { process.stdout.write(`ok   ${what}\n`); }
const WAIT = 30000;

async function rowState(page, name, state) {
  await page.waitForSelector(`#rows tr[data-name="${name}"][data-state="${state}"]`, { timeout: WAIT });
}
async function visibleNames(page) {
  return page.$$eval("#rows tr", (trs) => trs.map((t) => t.dataset.name));
}
async function expectNames(page, want, what) {
  await page.waitForFunction((w) => {
    const got = [...document.querySelectorAll("#rows tr")].map((t) => t.dataset.name).sort();
    return JSON.stringify(got) === JSON.stringify([...w].sort());
  }, want, { timeout: WAIT }).catch(async () => {
    throw new Error(`${what}: want ${JSON.stringify(want)}, got ${JSON.stringify(await visibleNames(page))}`);
  });
  ok(what);
}

(async () => {
  const browser = await chromium.launch({ executablePath: chromiumPath, args: ["--no-sandbox", "--disable-gpu"] });
  const page = await browser.newPage({ viewport: { width: 1480, height: 900 }, colorScheme: "dark" });
  const errors = [];
  page.on("pageerror", (e) => errors.push(String(e)));
  page.on("console", (m) => { if (m.type() === "error") errors.push(m.text()); });
  await page.goto(url);

  // Processes appear, live.
  await rowState(page, "rdb_eq_1", "active");
  await rowState(page, "gw_main", "active");
  await page.waitForSelector('#conn[data-state="live"]', { timeout: WAIT });
  ok("processes appear on a live table");

  // A long name (and host, and attributes) is cut, not allowed to widen the
  // table past its box; the whole text is in the tooltip.
  const LONG = "analytics_systematic_equities_europe_intraday_signal_backtest_replay_worker_with_a_very_long_name_01";
  await rowState(page, LONG, "active");
  const box = await page.$eval(".table-wrap", (w) => [w.scrollWidth, w.clientWidth]);
  if (box[0] > box[1] + 1) {
    const cols = await page.$$eval("thead th", (ths) => ths.map((t) => `${t.textContent.trim()}=${Math.round(t.getBoundingClientRect().width)}`));
    throw new Error(`long values widen the table past its box: ${box}; columns ${cols.join(" ")}`);
  }
  const tip = await page.$eval(`#rows tr[data-name="${LONG}"] td.name .clip`, (e) => [e.title, e.scrollWidth > e.clientWidth]);
  if (tip[0] !== LONG || !tip[1]) throw new Error(`long name not cut with its tooltip: ${JSON.stringify(tip)}`);
  ok("long names are cut, the whole name in the tooltip");
  const first = await visibleNames(page);
  if (first[0] !== "hdb_eq_2" && first[0] !== "tp_old" && first[0] !== "feed_fx") {
    // most severe first: an error/disconnected/warning row leads
  }
  const order = await page.$$eval("#rows tr", (trs) => trs.map((t) => t.dataset.state));
  const sev = { error: 0, disconnected: 1, warning: 2, starting: 3, active: 4 };
  for (let i = 1; i < order.length; i++) {
    if (sev[order[i - 1]] > sev[order[i]]) throw new Error(`not sorted by severity: ${order}`);
  }
  ok("sorted by severity");

  // State is colour + icon + text.
  const badge = await page.$eval('#rows tr[data-name="rdb_eq_1"] .badge', (b) => ({
    text: b.textContent, colour: getComputedStyle(b).color, icon: b.querySelector(".i").textContent,
  }));
  if (!badge.text.includes("active") || badge.icon !== "✔") throw new Error(`badge ${JSON.stringify(badge)}`);
  ok("state shown as icon and text and colour");

  // Goes to warning, then error, then comes back; announced in the live region.
  await cmd("pause rdb_eq_2");
  await rowState(page, "rdb_eq_2", "warning");
  await page.waitForFunction(() => document.getElementById("announce").textContent.includes("rdb_eq_2"), null, { timeout: WAIT });
  const live = await page.$eval("#announce", (a) => [a.getAttribute("aria-live"), a.getAttribute("role"), a.textContent]);
  if (live[0] !== "polite" || live[1] !== "status") throw new Error(`live region ${live}`);
  ok(`warning, announced: "${live[2]}"`);
  await rowState(page, "rdb_eq_2", "error");
  ok("error");
  const age = await page.$eval('#rows tr[data-name="rdb_eq_2"] [data-role="age"]', (a) => a.textContent);
  await page.waitForFunction((before) => {
    const a = document.querySelector('#rows tr[data-name="rdb_eq_2"] [data-role="age"]');
    return a && a.textContent !== before;
  }, age, { timeout: WAIT });
  ok("heartbeat age ticks");
  await cmd("resume rdb_eq_2");
  await rowState(page, "rdb_eq_2", "active");
  ok("back to active");

  const all = (await visibleNames(page)).slice().sort();

  // Free text.
  await page.fill("#search", "hdb");
  await expectNames(page, all.filter((n) => n.startsWith("hdb")), "free-text filter");
  await page.fill("#search", "region=nyc tier=1");
  await expectNames(page, ["rdb_eq_2"], "free text matches attributes");
  await page.fill("#search", "");
  // Kind.
  await page.selectOption("#kind", "rdb");
  await expectNames(page, all.filter((n) => n.startsWith("rdb")), "kind filter");
  await page.selectOption("#kind", "");
  // Host.
  await page.selectOption("#host", "host-b");
  await expectNames(page, ["rdb_eq_2", "hdb_eq_2"], "host filter");
  await page.selectOption("#host", "");
  // State, with the keyboard: Tab to the count buttons, Enter toggles.
  await page.focus('.count[data-state="warning"]');
  await page.keyboard.press("Enter");
  const pressed = await page.$eval('.count[data-state="warning"]', (b) => b.getAttribute("aria-pressed"));
  if (pressed !== "true") throw new Error("Enter did not press the warning filter");
  await expectNames(page, ["feed_fx"], "state filter by keyboard");
  await page.keyboard.press("Enter");
  await expectNames(page, all, "filters cleared");
  // "/" jumps to the search box.
  await page.focus("body");
  await page.keyboard.press("/");
  const focused = await page.evaluate(() => document.activeElement.id);
  if (focused !== "search") throw new Error(`"/" focused ${focused}`);
  ok("keyboard: / focuses search");

  // Subscribe to chosen services only.
  await page.click("#sub-choose");
  await page.waitForSelector('#chooser-list input[value="gw_main"]', { timeout: WAIT });
  await page.check('#chooser-list input[value="gw_main"]');
  await page.check('#chooser-list input[value="rdb_eq_1"]');
  await page.click("#chooser-apply");
  await expectNames(page, ["gw_main", "rdb_eq_1"], "subscription narrows the table");
  const n = await page.$eval("#n-all", (e) => e.textContent);
  if (n !== "2") throw new Error(`counts follow the subscription: ${n}`);
  await page.click("#sub-all");
  await expectNames(page, all, "subscribed to all again");

  if (errors.length) throw new Error(`page errors: ${errors.join("; ")}`);

  // A picture for the docs: one process in error, one warning, one gone.
  await cmd("pause hdb_eq_2");
  await rowState(page, "hdb_eq_2", "error");
  await page.waitForTimeout(1500); // let the "flash" of the change fade for the picture
  if (shot) {
    await page.screenshot({ path: shot, fullPage: true });
    ok(`screenshot ${shot}`);
  }
  await browser.close();
  process.stdout.write("DONE\n");
  process.exit(0);
})().catch((e) => { process.stdout.write(`FAIL ${e && e.stack || e}\n`); process.exit(1); });
