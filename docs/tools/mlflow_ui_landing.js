// Which view of the MLflow UI a fresh browser lands on (docs/TRAINING.md "MLflow": the landing view).
//
//   node docs/tools/mlflow_ui_landing.js http://127.0.0.1:5000 <experiment id>
//
// Needs Debian's `chromium` and `npm install puppeteer-core` (PUPPETEER_SKIP_DOWNLOAD=1: no browser
// download). Each row starts from a fresh profile (empty localStorage), except the last, which reuses
// the profile in which "Model training" was clicked once. Prints the URL each page ends on.
const puppeteer = require('puppeteer-core');
const os = require('os'), path = require('path'), fs = require('fs');

(async () => {
  const [base, exp] = process.argv.slice(2);
  const sleep = (ms) => new Promise(r => setTimeout(r, ms));
  const fresh = () => puppeteer.launch({executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    headless: 'new', args: ['--no-sandbox', '--disable-gpu'],
    userDataDir: fs.mkdtempSync(path.join(os.tmpdir(), 'mlflow-ui-'))});
  const open = async (browser, url) => {
    const page = await browser.newPage();
    await page.goto(url, {waitUntil: 'networkidle0'});
    await sleep(3000);
    return page;
  };
  const tab = (url) => url.split('#')[1].split('&')[0];
  let b = await fresh();
  console.log(`fresh browser, ${base}/#/experiments/${exp} -> ${tab((await open(b, `${base}/#/experiments/${exp}`)).url())}`);
  await b.close();
  b = await fresh();
  const runs = `${base}/#/experiments/${exp}/runs?workflowType=machine_learning`;
  console.log(`fresh browser, ${runs} -> ${tab((await open(b, runs)).url())}`);
  await b.close();
  b = await fresh();
  const page = await open(b, `${base}/#/`);
  const [toggle] = await page.$$("xpath/.//div[@role='button'][span[normalize-space(text())='Model training']]");
  await toggle.evaluate(el => el.click());
  await sleep(2000);
  const stored = await page.evaluate(() => localStorage.getItem('mlflow.workflowType_v1'));
  console.log(`after one click on "Model training": localStorage mlflow.workflowType_v1 = ${stored}`);
  console.log(`same browser, ${base}/#/experiments/${exp} -> ${tab((await open(b, `${base}/#/experiments/${exp}`)).url())}`);
  await b.close();
})();
