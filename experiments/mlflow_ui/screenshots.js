// node screenshots.js BASE OUTDIR name=#/hash/path ...  (playwright-core from npm, /usr/bin/chromium): one fresh browser
// profile, as a first-time user; each page is saved as NAME.png (and its visible text as NAME.txt) after it settles
const { chromium } = require('playwright-core');
const fs = require('fs'), os = require('os'), path = require('path');
(async () => {
  const [base, out, ...pages] = process.argv.slice(2);
  const profile = fs.mkdtempSync(path.join(os.tmpdir(), 'mlflowui-chrome-'));
  const ctx = await chromium.launchPersistentContext(profile, {
    executablePath: '/usr/bin/chromium', headless: true, viewport: { width: 1600, height: 1000 },
    args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
           '--disable-component-update', '--disable-sync'] });
  // the MLflow Assistant side panel opens by itself on a browser's first visit and takes a third of the
  // width; these are the two keys the UI stores when a user closes it once
  if (process.env.KEEP_ASSISTANT !== '1') await ctx.addInitScript(() => {
    localStorage.setItem('mlflow.assistant.fab.autoOpenedOnFirstLoad_v1', 'true');
    localStorage.setItem('mlflow.assistant.panelOpen_v1', 'false');
  });
  const page = ctx.pages()[0] || await ctx.newPage();
  // the workspace switch at the top of the sidebar: one click, remembered by the browser
  await page.goto(`${base}/`, { waitUntil: 'load' });
  await page.waitForTimeout(5000);
  await page.getByText('Model training', { exact: true }).first().click();
  await page.waitForTimeout(2000);
  const settle = async () => {  // no hover or focus left on a control: its tooltip would cover the page
    await page.mouse.move(1590, 990);
    await page.evaluate(() => document.activeElement && document.activeElement.blur());
    await page.waitForTimeout(800);
  };
  for (const spec of pages) {
    const [name, hash] = spec.split('=', 2).length === 2 ? [spec.slice(0, spec.indexOf('=')), spec.slice(spec.indexOf('=') + 1)] : [spec, ''];
    await page.goto(`${base}/${hash}`, { waitUntil: 'load' });
    await page.waitForTimeout(7000);
    if (await page.getByRole('dialog').count()) { await page.keyboard.press('Escape'); await page.waitForTimeout(1000); }  // one-time promo popups
    await settle();
    await page.screenshot({ path: path.join(out, `${name}.png`) });
    fs.writeFileSync(path.join(out, `${name}.txt`), await page.evaluate(() => document.body.innerText));
    console.log('saved', name, page.url());
  }
  await ctx.close();
})().catch(e => { console.error(e); process.exit(1); });
