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
