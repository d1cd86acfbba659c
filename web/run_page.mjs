// Drives index.html in headless Chromium (playwright-core, Debian's /usr/bin/chromium): for each URL given (the page
// with ?model=...&image=...), one line of JSON, the page's result. node run_page.mjs URL... (tests/deploy/test_app_files.py)
import { chromium } from "playwright-core";

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  // (a closed network: no background connections; root in a container: no sandbox)
  args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"],
});
try {
  for (const url of process.argv.slice(2)) {
    const page = await browser.newPage();
    const logs = [];
    page.on("pageerror", (e) => logs.push(`pageerror: ${e.message}`));
    await page.goto(url);
    await page.waitForFunction(() => ["done", "error"].includes(document.body.dataset.state), null,
                               { timeout: 120000 });
    const result = await page.evaluate(() => window.edgevitResult);
    console.log(JSON.stringify({ ...result, logs }));
    await page.close();
  }
} finally {
  await browser.close();
}
