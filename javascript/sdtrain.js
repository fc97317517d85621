// SD-Train's page helpers. The WebUI loads every javascript/*.js into its page; all globals here start with "sdtrain".

/**
 * Rebuild the Lora cards of txt2img and img2img, so a LoRA trained a moment ago shows up without a reload.
 * The WebUI caches those cards as HTML; its hidden buttons #<tab>_lora_extra_refresh_internal rebuild them
 * (extraNetworks.js dispatches a click on them the same way). Missing buttons (Lora disabled) are skipped.
 * Returns its arguments, so it can serve as the `_js` of any Gradio event without changing the inputs.
 */
function sdtrainRefreshLoraCards(...args) {
    for (const tab of ["txt2img", "img2img"]) {
        const button = sdtrainRoot().getElementById(`${tab}_lora_extra_refresh_internal`);
        if (button) {
            button.dispatchEvent(new Event("click"));
        }
    }
    return args;
}

/**
 * After a training job, show its LoRA at once. SD-Train's tab polls its jobs and writes the id of the latest
 * finished job into the hidden textbox #sdtrain_finished (ids start with the job kind: "train-3-1700000000"); by
 * then the server has copied the LoRA into the Lora folder and rescanned it. A new train id there rebuilds the
 * Lora cards, once per job. Only SD-Train's own element is read.
 */
let sdtrainSeenFinished = null;

function sdtrainCheckFinishedJob() {
    const box = sdtrainRoot().querySelector("#sdtrain_finished textarea, #sdtrain_finished input");
    if (!box || box.value === sdtrainSeenFinished) {
        return false;
    }
    sdtrainSeenFinished = box.value;
    if (!box.value.startsWith("train-")) {
        return false;
    }
    sdtrainRefreshLoraCards();
    return true;
}

/** The page's root: the WebUI's gradioApp(), or the document in SD-Train's standalone app. */
function sdtrainRoot() {
    return typeof gradioApp === "function" ? gradioApp() : document;
}

/**
 * Show each error that names a field (a message with data-field="<option name>") beside that field too: the
 * component with the class sdtrain-field-<name>, looked for first in the message's own tab, the visible one
 * first. Its collapsed accordion is opened, the field is outlined and the message is put under it. The note goes
 * when the message is replaced or the field is edited. (Each such message is new HTML, with data-shown, so the
 * same error given twice is shown twice.)
 */
function sdtrainShowFieldErrors() {
    const root = sdtrainRoot();
    for (const note of root.querySelectorAll(".sdtrain-field-note")) {
        if (!note.sdtrainSource || !note.sdtrainSource.isConnected) {
            sdtrainClearNote(note);
        }
    }
    for (const message of root.querySelectorAll(".sdtrain-message[data-field]")) {
        if (message.sdtrainNote) {
            continue;  // placed once: a note the user took away by editing stays away
        }
        const field = sdtrainFindField(message, message.dataset.field);
        if (!field) {
            continue;
        }
        for (const old of field.querySelectorAll(":scope > .sdtrain-field-note")) {
            sdtrainClearNote(old);
        }
        const note = document.createElement("div");
        note.className = "sdtrain-field-note";
        note.textContent = message.textContent;
        note.sdtrainSource = message;
        message.sdtrainNote = note;
        field.classList.add("sdtrain-field-invalid");
        field.appendChild(note);
        field.addEventListener("input", () => sdtrainClearNote(note), {once: true});
        sdtrainOpenAccordions(field);
    }
    return false;
}

function sdtrainClearNote(note) {
    const field = note.parentElement;
    note.remove();
    if (field && !field.querySelector(":scope > .sdtrain-field-note")) {
        field.classList.remove("sdtrain-field-invalid");
    }
}

function sdtrainFindField(message, name) {
    const className = "sdtrain-field-" + name;
    const tab = message.closest(".tabitem");
    for (const scope of [tab, sdtrainRoot()]) {
        if (!scope) {
            continue;
        }
        const fields = Array.from(scope.getElementsByClassName(className));
        const shown = fields.find((f) => f.getClientRects().length > 0 || sdtrainInClosedAccordion(f));
        if (shown || fields.length) {
            return shown || fields[0];
        }
    }
    return null;
}

// Gradio 3.41 draws an accordion as a header (.label-wrap; a click toggles it) followed by its content, which has
// display: none while the accordion is closed.
function sdtrainClosedAccordions(element) {
    const closed = [];
    for (let e = element; e; e = e.parentElement) {
        const header = e.previousElementSibling;
        if (header && header.classList.contains("label-wrap") && e.style.display === "none") {
            closed.push(header);
        }
    }
    return closed;
}

function sdtrainInClosedAccordion(element) {
    return sdtrainClosedAccordions(element).length > 0;
}

function sdtrainOpenAccordions(element) {
    for (const header of sdtrainClosedAccordions(element).reverse()) {  // the outermost first
        header.click();
    }
}

function sdtrainOnUiUpdate() {
    sdtrainCheckFinishedJob();
    sdtrainShowFieldErrors();
}

// Gradio sets values without DOM events; the WebUI calls its callbacks after each update. The standalone app has
// no such hook (it adds this file to its page itself): a MutationObserver stands in, run once per frame at most.
if (typeof onAfterUiUpdate === "function") {
    onAfterUiUpdate(sdtrainOnUiUpdate);
} else if (typeof onUiUpdate === "function") {  // WebUI before v1.6
    onUiUpdate(sdtrainOnUiUpdate);
} else if (typeof MutationObserver === "function") {
    let sdtrainPending = false;
    new MutationObserver(() => {
        if (!sdtrainPending) {
            sdtrainPending = true;
            requestAnimationFrame(() => {
                sdtrainPending = false;
                sdtrainOnUiUpdate();
            });
        }
    }).observe(document.body, {childList: true, subtree: true, characterData: true});
}
