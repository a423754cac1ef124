// The dashboard of an estate `qmesh up` started, in headless Chromium
// (playwright-core). Run by crates/qmesh/tests/up.rs, which starts the
// estate and kills a process when this script prints `CMD kill NAME`
// (answering `OK` on stdin once done).
//
// usage: node up_dashboard.cjs URL PLAYWRIGHT_CORE_DIR CHROMIUM NAMES VICTIM [SCREENSHOT.png]
//   NAMES: the registry's names of every process, comma-separated;
//   VICTIM: the one to kill (as the registry names it).
"use strict";

const readline = require("readline");
const [url, pwDir, chromiumPath, namesArg, victim, shot] = process.argv.slice(2);
const names = namesArg.split(",");
const { chromium } = require(pwDir);

const rl = readline.createInterface({ input: process.stdin });
const acks = [];
rl.on("line", (l) => { const f = acks.shift(); if (f) f(l); });
function cmd(text) {
  return new Promise((resolve) => { acks.push(resolve); process.stdout.write(`CMD ${text}\n`); });
}
function ok(what) { process.stdout.write(`ok   ${what}\n`); }
const WAIT = 60000;
const row = (name) => `#rows tr[data-name="${name}"]`;

(async () => {
  const browser = await chromium.launch({ executablePath: chromiumPath, args: ["--no-sandbox", "--disable-gpu"] });
  const page = await browser.newPage({ viewport: { width: 1480, height: 640 }, colorScheme: "dark" });
  const errors = [];
  page.on("pageerror", (e) => errors.push(String(e)));
  page.on("console", (m) => { if (m.type() === "error") errors.push(m.text()); });
  await page.goto(url);
  await page.waitForSelector('#conn[data-state="live"]', { timeout: WAIT });

  for (const n of names) await page.waitForSelector(`${row(n)}[data-state="active"]`, { timeout: WAIT });
  ok(`every process of the estate listed active: ${names.join(" ")}`);

  await cmd(`kill ${victim}`);
  await page.waitForSelector(`${row(victim)}:not([data-state="active"])`, { timeout: WAIT });
  const down = await page.$eval(row(victim), (r) => r.dataset.state);
  ok(`${victim} killed: ${down}`);
  if (shot) {
    await page.screenshot({ path: shot, fullPage: true });
    ok(`screenshot ${shot}`);
  }
  await page.waitForSelector(`${row(victim)}[data-state="active"]`, { timeout: WAIT });
  ok(`${victim} restarted by the supervisor: active again`);
  for (const n of names) await page.waitForSelector(`${row(n)}[data-state="active"]`, { timeout: WAIT });
  ok("every process active");

  if (errors.length) throw new Error(`page errors: ${errors.join("; ")}`);
  await browser.close();
  process.stdout.write("DONE\n");
  process.exit(0);
})().catch((e) => { process.stdout.write(`FAIL ${e.stack || e}\n`); process.exit(1); });
