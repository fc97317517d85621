// SD-Train's page helpers. The WebUI loads every javascript/*.js into its page; all globals here start with "sdtrain".

/**
 * Rebuild the Lora cards of txt2img and img2img, so a LoRA trained a moment ago shows up without a reload.
 * The WebUI caches those cards as HTML; its hidden buttons #<tab>_lora_extra_refresh_internal rebuild them
 * (extraNetworks.js dispatches a click on them the same way). Missing buttons (Lora disabled) are skipped.
 * Returns its arguments, so it can serve as the `_js` of any Gradio event without changing the inputs.
 */
function sdtrainRefreshLoraCards(...args) {
    for (const tab of ["txt2img", "img2img"]) {
        const button = gradioApp().getElementById(`${tab}_lora_extra_refresh_internal`);
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
    const box = gradioApp().querySelector("#sdtrain_finished textarea, #sdtrain_finished input");
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

// Gradio sets the textbox's value without a DOM event; the status line beside it changes in the same update.
if (typeof onAfterUiUpdate === "function") {
    onAfterUiUpdate(sdtrainCheckFinishedJob);
} else if (typeof onUiUpdate === "function") {  // WebUI before v1.6
    onUiUpdate(sdtrainCheckFinishedJob);
}
